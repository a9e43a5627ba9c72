"""Training on a COCO dataset of one's own (the own_coco fixture): full training batches, class-count checks and
the `model.num_classes` override, data roots that are never written, evaluation one image at a time."""

import json
import os

import pytest
import torch
from own_coco import DATA_OVERRIDES, USABLE_TRAIN, make_own_coco
from standin import build_standin

import resnest_cuda
from detection import test, train
from detection.build import build_model
from detection.configs import get_config
from detection.data.build import prepare_data, resolve_root
from detection.data.loader import GroupedBatchSampler, ReplaceUnreadable, collate
from detection.data.shapes import DEFAULT_ROOT
from detection.engine.overrides import apply_overrides
from detection.engine.train import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "standin_config.py")
has_detector_ops = all(hasattr(resnest_cuda, n) for n in ("nms", "roi_align", "resnest14"))


@pytest.fixture(scope="module")
def own_root(tmp_path_factory):
    return make_own_coco(str(tmp_path_factory.mktemp("own_coco")))


def _listing(root):
    return sorted((os.path.relpath(os.path.join(d, n), root), os.path.getmtime(os.path.join(d, n)))
                  for d, _, names in os.walk(root) for n in names)


def test_last_batch_is_completed_from_the_start_of_the_epoch():
    # 5 indices, one aspect group, batch 2: the leftover [4] takes the epoch's first index.
    assert list(GroupedBatchSampler(list(range(5)), [0] * 5, 2, fill_last=True)) == [[0, 1], [2, 3], [4, 0]]
    assert list(GroupedBatchSampler(list(range(5)), [0] * 5, 2)) == [[0, 1], [2, 3], [4]]
    # Two groups, batch 3, order 5,0,1,2,3,4 with groups 5:1 0:0 1:1 2:0 3:0 4:1 -> [0,2,3], [5,1,4]: no leftover.
    order, groups = [5, 0, 1, 2, 3, 4], [0, 1, 0, 0, 1, 1]
    assert list(GroupedBatchSampler(order, groups, 3, fill_last=True)) == [[0, 2, 3], [5, 1, 4]]
    # 25 images at batch 4: 7 batches, all of 4, the last one repeats 3 images.
    sampler = GroupedBatchSampler(list(range(25)), [i % 2 for i in range(25)], 4, fill_last=True)
    batches = list(sampler)
    assert len(batches) == sampler.num_batches() == 7 and {len(b) for b in batches} == {4}
    assert sampler.filled_per_epoch() == 3 and sorted({i for b in batches for i in b}) == list(range(25))
    one = GroupedBatchSampler([7], [0] * 8, 2, fill_last=True)  # a single image still makes a batch of two
    assert list(one) == [[7, 7]]


def test_unreadable_samples_are_replaced_by_the_next_readable_one():
    samples = ["a", None, None, "d"]

    class Data:
        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            return None if samples[i] is None else (samples[i], {"i": i})

    view = ReplaceUnreadable(Data())
    assert view[1] == ("d", {"i": 3}, 2) and view[0] == ("a", {"i": 0}, 0)
    images, targets, dropped = collate([view[0], view[1], None])
    assert images == ["a", "d"] and [t["i"] for t in targets] == [0, 3] and dropped == 3
    samples[:] = [None, None]
    assert ReplaceUnreadable(Data())[0] is None


@pytest.mark.skipif(not has_detector_ops, reason="needs the detection ops and the ResNeSt backbones")
def test_real_detector_trains_on_own_data_with_batches_of_four(own_root, tmp_path, capsys):
    # 26 usable images at 4 per batch plus a truncated JPEG: without refilling, the last batch has one image (or
    # a batch loses its truncated image) and batch-statistics BatchNorm stops the run.
    seen = []

    def builder(cfg):
        model = build_model(cfg)
        model.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])) if m.training else None)
        return model

    argv = ["--config", "tiny_test", "--data-root", own_root, "--work-dir", str(tmp_path), "--no-progress",
            *DATA_OVERRIDES, "data.images_per_gpu=4", "data.train_scales=64", "data.max_size=96",
            "data.test_scale=64", "data.min_size=0", "data.workers_per_gpu=0", "--threads", "1"]
    assert train.main(argv, model_builder=builder) == 0
    assert seen == [4] * 7
    log = open(tmp_path / "train.log").read()
    assert "completed with 2 image(s) repeated" in log and "1 unreadable image(s) skipped" in log
    assert f"{USABLE_TRAIN} train / 10 val images" in log
    results = json.load(open(tmp_path / "results_epoch_1.json"))
    assert results and {r["category_id"] for r in results} <= {3, 7, 11}
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert {"eval_bbox", "eval_segm"} <= {r["type"] for r in records}


def _standin(own_root, work_dir, *extra):
    argv = ["--config", STANDIN, "--data-root", own_root, "--work-dir", str(work_dir), "--no-progress",
            *DATA_OVERRIDES, *extra]
    return train.main(argv, model_builder=build_standin)


@pytest.mark.parametrize("classes", [4, 2])
def test_class_count_must_match_the_categories(own_root, tmp_path, capsys, classes):
    assert _standin(own_root, tmp_path, f"model.num_classes={classes}") == 2
    err = capsys.readouterr().err
    assert (f"error: the model has {classes} classes but the training annotations have 3 categories "
            "(ids 3, 7, 11: cat, dog, bird); set model.num_classes=3") in err
    assert not os.path.exists(tmp_path / "latest.pth")


def test_matching_class_count_trains_and_evaluates_with_the_dataset_ids(own_root, tmp_path, capsys):
    assert _standin(own_root, tmp_path / "run", "model.num_classes=3", "solver.epochs=1") == 0
    out = str(tmp_path / "r.json")
    args = ["--config", STANDIN, "--checkpoint", str(tmp_path / "run" / "latest.pth"), "--data-root", own_root,
            "--out", out, *DATA_OVERRIDES, "model.num_classes=3"]
    assert test.main(args, model_builder=build_standin) == 0
    results = json.load(open(out))
    assert len(results) == 10 and {r["category_id"] for r in results} <= {3, 7, 11}
    assert test.main([*args[:-1], "model.num_classes=4"], model_builder=build_standin) == 2
    assert "set model.num_classes=3" in capsys.readouterr().err


def test_num_classes_override_reaches_every_head_of_every_stage():
    cfg = get_config("tiny_cascade_test")
    apply_overrides(cfg, ["model.num_classes=5"])
    stages = cfg.model.roi_head.stages
    assert len(stages) == 3 and [s.box_head.num_classes for s in stages] == [5, 5, 5]
    assert cfg.model.roi_head.mask_head.num_classes == 5
    if has_detector_ops:
        model = build_model(cfg.model)
        assert [h.fc_cls.out_features for h in model.roi_head.bbox_head] == [6, 6, 6]  # 5 classes + background
        assert [h.conv_logits.out_channels for h in model.roi_head.mask_head] == [5, 5, 5]
    with pytest.raises(ValueError, match="model.num_classes: expected a positive integer"):
        apply_overrides(cfg, ["model.num_classes=0"])


def test_shapes_config_never_writes_into_a_folder_holding_other_data(own_root, tmp_path, capsys):
    before = _listing(own_root)
    argv = ["--config", STANDIN, "--data-root", own_root, "--work-dir", str(tmp_path / "s"), "--no-progress"]
    assert train.main(argv, model_builder=build_standin) == 2
    err = capsys.readouterr().err
    assert f"error: data root {own_root} holds other files" in err and "data.dataset=coco" in err
    assert _listing(own_root) == before


def test_generated_data_goes_to_its_own_folder_per_parameter_set(tmp_path):
    cfg = get_config(STANDIN)
    first = prepare_data(cfg.data, str(tmp_path))
    assert os.path.dirname(first) == str(tmp_path) and os.path.basename(first).startswith("train16_val8_64px")
    files = _listing(first)
    apply_overrides(cfg, ["data.shapes_num_train=6"])
    second = prepare_data(cfg.data, str(tmp_path))
    assert second != first and _listing(first) == files  # the first parameter set is left as it was
    assert len(os.listdir(os.path.join(second, "train"))) == 6
    tiny = get_config("tiny_test")  # used to generate into ./data/coco
    assert resolve_root(tiny.data).startswith(os.path.expanduser(DEFAULT_ROOT) + os.sep)


def test_evaluation_runs_one_image_per_process_by_default(own_root, tmp_path, monkeypatch):
    cfg = get_config(STANDIN)
    apply_overrides(cfg, [*DATA_OVERRIDES, "model.num_classes=3", "data.images_per_gpu=4"])
    threads = torch.get_num_threads()  # a Trainer sets the process's threads; train() would restore them
    try:
        trainer = Trainer(cfg, str(tmp_path), model_builder=build_standin, data_root=own_root, progress=False)
        trainer.metrics.close()
        assert trainer.train_loader.batch_sampler.batch_size == 4 and trainer.val_loader.batch_size == 1
        apply_overrides(cfg, ["data.test_images_per_gpu=3"])
        trainer = Trainer(cfg, str(tmp_path / "b"), model_builder=build_standin, data_root=own_root, progress=False)
        trainer.metrics.close()
        assert trainer.val_loader.batch_size == 3
    finally:
        torch.set_num_threads(threads)
