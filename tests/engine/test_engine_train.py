import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from standin import StandInConfig, build_standin

from detection import demo, test, train
from detection.config import Config, DataConfig, SolverConfig
from detection.configs import get_config
from detection.data.build import resolve_root
from detection.engine.checkpoint import atomic_save, load_checkpoint, prune_checkpoints, save_checkpoint
from detection.engine.overrides import apply_overrides
from detection.engine.train import Trainer, check_solver, lr_at, scaled_lr

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "standin_config.py")
REPO = os.path.dirname(os.path.dirname(HERE))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("shapes"))


def _train(work_dir, data_root, *extra):
    argv = ["--config", CONFIG, "--data-root", data_root, "--work-dir", str(work_dir), "--no-progress", *extra]
    return train.main(argv, model_builder=build_standin)


def _weights(work_dir, name="latest.pth"):
    return load_checkpoint(os.path.join(work_dir, name))["model"]


def test_lr_schedule():
    solver = SolverConfig(lr=0.02, base_batch_size=16, warmup_iters=10, warmup_ratio=0.001, lr_steps=(2, 3))
    base = scaled_lr(solver, total_batch=4)
    assert base == pytest.approx(0.005)
    assert lr_at(base, solver, iteration=0, epoch=0) == pytest.approx(0.005 * 0.001)
    assert lr_at(base, solver, iteration=5, epoch=0) == pytest.approx(0.005 * (0.001 * 0.5 + 0.5))
    assert lr_at(base, solver, iteration=10, epoch=1) == pytest.approx(0.005)
    assert lr_at(base, solver, iteration=50, epoch=2) == pytest.approx(0.0005)
    assert lr_at(base, solver, iteration=50, epoch=3) == pytest.approx(0.00005)


@pytest.mark.parametrize("field, value, expected", [
    ("epochs", 0, "solver.epochs: expected a positive number, got 0"),
    ("lr", -0.1, "solver.lr: expected a positive number"),
    ("keep_checkpoints", -1, "solver.keep_checkpoints: expected a number >= 0, got -1"),
    ("checkpoint_iters", -5, "solver.checkpoint_iters: expected a number >= 0"),
    ("grad_clip", 0.0, "solver.grad_clip: expected a positive max norm or None"),
    ("lr_steps", (11, 8), "solver.lr_steps: expected increasing epoch counts >= 1, got \\(11, 8\\)"),
])
def test_bad_solver_settings_are_rejected(field, value, expected):
    check_solver(SolverConfig())
    with pytest.raises(ValueError, match=expected):
        check_solver(SolverConfig(**{field: value}))


def test_overrides_convert_types_and_reject_unknown_keys():
    cfg = Config("x", StandInConfig(), DataConfig(), SolverConfig())
    apply_overrides(cfg, ["solver.epochs=3", "solver.lr=0.5", "data.train_scales=96,128", "solver.grad_clip=none",
                          "data.with_masks=false", "data.scale_mode=value", "model.width=4"])
    assert cfg.solver.epochs == 3 and cfg.solver.lr == 0.5 and cfg.data.train_scales == (96, 128)
    assert cfg.solver.grad_clip is None and cfg.data.with_masks is False and cfg.data.scale_mode == "value"
    assert cfg.model.width == 4
    apply_overrides(cfg, ["solver.grad_clip=2.5"])
    assert cfg.solver.grad_clip == 2.5
    with pytest.raises(ValueError, match="solver has no field 'epoch'"):
        apply_overrides(cfg, ["solver.epoch=2"])
    with pytest.raises(ValueError, match="expected int"):
        apply_overrides(cfg, ["solver.epochs=two"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(cfg, ["solver.epochs"])


def test_atomic_save_and_bare_state_dict(tmp_path):
    path = str(tmp_path / "w.pth")
    atomic_save({"a": torch.ones(2)}, path)
    assert os.listdir(tmp_path) == ["w.pth"]
    assert torch.equal(load_checkpoint(path)["model"]["a"], torch.ones(2))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "none.pth"))


def test_keep_checkpoints_prunes_old_epoch_files(tmp_path):
    model = torch.nn.Linear(2, 2)
    (tmp_path / "epoch_x.pth").write_bytes(b"not ours")  # names that are not epoch_<n>.pth are left alone
    for epoch in (1, 2, 3, 10):
        save_checkpoint(str(tmp_path), model, None, epoch=epoch, iteration=epoch, config_name="c", keep=2)
    assert sorted(os.listdir(tmp_path)) == ["epoch_10.pth", "epoch_3.pth", "epoch_x.pth", "latest.pth"]
    assert load_checkpoint(str(tmp_path / "latest.pth"))["epoch"] == 10
    save_checkpoint(str(tmp_path), model, None, epoch=11, iteration=11, config_name="c")  # keep=0: keep all
    assert prune_checkpoints(str(tmp_path), 1) == [str(tmp_path / "epoch_3.pth"), str(tmp_path / "epoch_10.pth")]
    with pytest.raises(ValueError, match="keep: expected a positive"):
        prune_checkpoints(str(tmp_path), 0)


def test_train_resume_evaluate_demo(tmp_path, data_root, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert _train(full, data_root) == 0
    assert sorted(f for f in os.listdir(full) if f.endswith(".pth")) == ["epoch_1.pth", "epoch_2.pth", "latest.pth"]
    records = [json.loads(line) for line in open(full / "metrics.jsonl")]
    assert {r["type"] for r in records} == {"train", "eval_bbox", "eval_segm"}
    assert os.path.isdir(full / "tensorboard") and os.path.isfile(full / "results_epoch_2.json")
    state = load_checkpoint(str(full / "latest.pth"))
    assert state["epoch"] == 2 and state["iteration"] == 16 and state["config"] == "standin_tiny"

    # An interrupted run (stopped after epoch 1), resumed, ends with the uninterrupted run's weights.
    assert _train(part, data_root, "solver.epochs=1") == 0
    assert _train(part, data_root, "--resume") == 0
    for name, value in _weights(full).items():
        torch.testing.assert_close(_weights(part)[name], value, atol=1e-6, rtol=0)
    first = _weights(full, "epoch_1.pth")
    assert any(not torch.equal(first[k], v) for k, v in _weights(full).items())  # epoch 2 did train

    capsys.readouterr()
    args = ["--config", CONFIG, "--checkpoint", str(full / "latest.pth"), "--data-root", data_root]
    assert test.main([*args, "--out", str(tmp_path / "r.json")], model_builder=build_standin) == 0
    printed = capsys.readouterr().out
    assert printed.count("Average Precision") == 12 and printed.count("Average Recall") == 12  # bbox + segm
    assert len(json.load(open(tmp_path / "r.json"))) == 8
    image = os.path.join(resolve_root(get_config(CONFIG).data, data_root), "val", "000000.jpg")
    out_png = str(tmp_path / "demo.png")
    assert demo.main([*args[:4], "--image", image, "--out", out_png, "--score-thr", "0"],
                     model_builder=build_standin) == 0
    with open(out_png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_resume_in_the_middle_of_an_epoch(tmp_path, data_root, monkeypatch):
    # 2 epochs of 8 iterations; with checkpoint_iters=5, latest.pth is written at iterations 5 (epoch 1, batch 5),
    # 8 (end of epoch 1) and 10 (epoch 2, batch 2). The run is killed during iteration 12.
    full, part = tmp_path / "full", tmp_path / "part"
    assert _train(full, data_root) == 0
    train_step = Trainer._step

    def killed_at_iteration_12(self, *args):
        if self.iteration == 11:
            raise KeyboardInterrupt
        return train_step(self, *args)

    monkeypatch.setattr(Trainer, "_step", killed_at_iteration_12)
    assert _train(part, data_root, "solver.checkpoint_iters=5") == 130  # stopped inside a step: nothing saved
    state = load_checkpoint(str(part / "latest.pth"))
    assert (state["epoch"], state["epoch_step"], state["iteration"]) == (1, 2, 10)
    assert sorted(f for f in os.listdir(part) if f.endswith(".pth")) == ["epoch_1.pth", "latest.pth"]

    monkeypatch.setattr(Trainer, "_step", train_step)
    assert _train(part, data_root, "--resume", "solver.checkpoint_iters=5") == 0
    assert "resumed from" in open(part / "train.log").read() and "batch 2 of epoch 2" in open(part / "train.log").read()
    assert load_checkpoint(str(part / "latest.pth"))["iteration"] == 16
    for name, value in _weights(full).items():
        torch.testing.assert_close(_weights(part)[name], value, atol=1e-6, rtol=0)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, data_root, capsys):
    # 8 steps per epoch: the NaN comes at iteration 11, in epoch 2, after epoch 1 was saved.
    assert _train(tmp_path, data_root, "model.nan_at_step=11") == 1
    err = capsys.readouterr().err
    assert "non-finite loss at iteration 11 (epoch 2" in err
    assert load_checkpoint(str(tmp_path / "latest.pth"))["epoch"] == 1
    assert not os.path.exists(tmp_path / "epoch_2.pth")


def test_unknown_override_is_reported(tmp_path, data_root, capsys):
    assert _train(tmp_path, data_root, "solver.nope=1") == 2
    assert "unknown config key 'solver.nope'" in capsys.readouterr().err
    assert _train(tmp_path, data_root, "solver.checkpoint_iters=-1") == 2
    assert "error: solver.checkpoint_iters: expected a number >= 0, got -1" in capsys.readouterr().err


def test_torchrun_two_processes_match_one_process(tmp_path, data_root):
    """2 gloo processes × 1 image against 1 process × 2 images: same data per step, same mean loss, so the final
    weights agree up to float summation order (tolerance 1e-5)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, HERE]), OMP_NUM_THREADS="1")
    script = os.path.join(HERE, "run_standin.py")
    common = ["--config", CONFIG, "--data-root", data_root, "--no-progress", "--device", "cpu"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, "train",
               *common, "--work-dir", str(tmp_path / "two"), "data.images_per_gpu=1"]
    two = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        _, stderr = two.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(two.pid, signal.SIGKILL)  # the launcher and both workers
        two.communicate()
        raise
    assert two.returncode == 0, stderr[-3000:]
    assert _train(tmp_path / "one", data_root) == 0
    one_weights, two_weights = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for name, value in one_weights.items():
        torch.testing.assert_close(two_weights[name], value, atol=1e-5, rtol=0)
    assert "total batch 2" in open(tmp_path / "two" / "train.log").read()


def test_demo_enlarges_small_images_with_their_detections():
    from PIL import Image

    image = Image.new("RGB", (64, 32))
    masks = torch.zeros(1, 32, 64, dtype=torch.uint8)
    masks[0, 8:16, 4:12] = 1
    output = {"boxes": torch.tensor([[4.0, 8.0, 12.0, 16.0]]), "scores": torch.tensor([0.9]),
              "labels": torch.tensor([0]), "masks": masks}
    big, scaled = demo.enlarge(image, output, 256)
    assert big.size == (256, 128)
    torch.testing.assert_close(scaled["boxes"], torch.tensor([[16.0, 32.0, 48.0, 64.0]]))
    assert scaled["masks"].shape == (1, 128, 256) and scaled["masks"].dtype == torch.uint8
    assert scaled["masks"][0, 32:64, 16:48].all() and scaled["masks"].sum() == 32 * 32
    same, unchanged = demo.enlarge(image, output, 0)
    assert same is image and unchanged is output
    empty = {**output, "boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 32, 64, dtype=torch.uint8)}
    assert demo.enlarge(image, empty, 128)[1]["masks"].shape == (0, 64, 128)
