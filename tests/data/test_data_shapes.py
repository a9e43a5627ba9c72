import json
import os

import numpy as np
import pytest
import torch

from detection.data.coco import CocoDetection
from detection.data.loader import GroupedBatchSampler, build_train_loader, set_loader_epoch
from detection.data.shapes import CLASSES, ShapesParams, prepare_shapes

PARAMS = ShapesParams(num_train=6, num_val=3, image_size=64, seed=5)


def _files(root):
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_generation_is_deterministic(tmp_path):
    a = _files(prepare_shapes(str(tmp_path / "a"), PARAMS))
    b = _files(prepare_shapes(str(tmp_path / "b"), PARAMS))
    assert a == b and len(a) == 6 + 3 + 3  # images, two annotation files, meta.json
    c = _files(prepare_shapes(str(tmp_path / "c"), ShapesParams(num_train=6, num_val=3, image_size=64, seed=6)))
    assert c["train/000000.jpg"] != a["train/000000.jpg"]


def test_regenerates_only_when_parameters_change(tmp_path):
    root = prepare_shapes(str(tmp_path), PARAMS)
    ann = os.path.join(root, "annotations", "instances_train.json")
    os.utime(ann, (0, 0))
    prepare_shapes(str(tmp_path), PARAMS)
    assert os.path.getmtime(ann) == 0
    prepare_shapes(str(tmp_path), ShapesParams(num_train=4, num_val=3, image_size=64, seed=5))
    assert os.path.getmtime(ann) > 0
    assert len(json.load(open(ann))["images"]) == 4


def test_annotations_are_consistent_with_masks(tmp_path):
    root = prepare_shapes(str(tmp_path), ShapesParams(num_train=20, num_val=2, image_size=64, seed=1))
    ds = CocoDetection(os.path.join(root, "annotations/instances_train.json"), os.path.join(root, "train"),
                       with_masks=True, train=True)
    assert ds.class_names == list(CLASSES) and len(ds) == 20 and not ds.skipped
    payload = json.load(open(os.path.join(root, "annotations/instances_train.json")))
    kinds = {type(a["segmentation"]).__name__ for a in payload["annotations"]}
    assert kinds == {"list", "dict"}  # unoccluded polygons and occluded RLE both occur
    for index in range(len(ds)):
        _, target = ds[index]
        for box, mask in zip(target["boxes"], target["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            tight = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
            torch.testing.assert_close(box, tight)


def test_grouped_batches_share_aspect_and_cover_everything():
    groups = [0, 1, 0, 0, 1, 1, 0, 1, 0]
    batches = list(GroupedBatchSampler(list(range(9)), groups, batch_size=2))
    assert len(batches) == len(GroupedBatchSampler(list(range(9)), groups, 2)) == 5
    assert sorted(i for b in batches for i in b) == list(range(9))
    assert all(len({groups[i] for i in b}) == 1 for b in batches[:4])


def test_loader_order_is_a_function_of_seed_and_epoch(tmp_path):
    root = prepare_shapes(str(tmp_path), PARAMS)
    ds = CocoDetection(os.path.join(root, "annotations/instances_train.json"), os.path.join(root, "train"), train=True)

    def order(epoch, seed=0):
        loader = build_train_loader(ds, images_per_gpu=2, workers=0, seed=seed)
        set_loader_epoch(loader, epoch)
        return [i for batch in loader.batch_sampler for i in batch]

    assert order(1) == order(1) and order(1) != order(2) and order(1) != order(1, seed=9)
    shard0 = build_train_loader(ds, images_per_gpu=1, workers=0, seed=0, rank=0, world_size=2)
    shard1 = build_train_loader(ds, images_per_gpu=1, workers=0, seed=0, rank=1, world_size=2)
    assert sorted(i for b in list(shard0.batch_sampler) + list(shard1.batch_sampler) for i in b) == list(range(6))
    assert np.array_equal([b[0] for b in shard0.batch_sampler], order(0)[0::2])


def test_loader_starts_in_the_middle_of_an_epoch(tmp_path):
    root = prepare_shapes(str(tmp_path), PARAMS)
    ds = CocoDetection(os.path.join(root, "annotations/instances_train.json"), os.path.join(root, "train"), train=True)
    loader = build_train_loader(ds, images_per_gpu=2, workers=0, seed=0)
    set_loader_epoch(loader, 3)
    whole = list(loader.batch_sampler)
    assert len(loader) == len(whole) == 3
    set_loader_epoch(loader, 3, start_batch=2)
    assert list(loader.batch_sampler) == whole[2:] and len(loader) == 1
    assert [t["image_id"] for _, t in [s for b in loader for s in zip(b[0], b[1])]] == [
        ds[i][1]["image_id"] for i in whole[2]
    ]
    set_loader_epoch(loader, 3)  # the next epoch starts from its first batch again
    assert list(loader.batch_sampler) == whole
    with pytest.raises(ValueError, match="start_batch: expected 0..3, got 4"):
        set_loader_epoch(loader, 3, start_batch=4)
