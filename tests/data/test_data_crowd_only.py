"""Training images whose only annotations are crowd are kept as background-only images (mmdetection's
filter_empty_gt counts every annotation of a known category); images with no annotation at all are dropped."""

import json

import numpy as np
import torch
from PIL import Image

from detection.data.coco import CocoDetection
from detection.data.loader import collate
from detection.data.transforms import TrainTransform


def _dataset(tmp_path, filter_empty_gt=True, with_masks=True):
    (tmp_path / "images").mkdir()
    for name in ("crowd.jpg", "none.jpg", "other_cat.jpg"):
        Image.fromarray(np.full((40, 48, 3), 100, np.uint8)).save(tmp_path / "images" / name)
    crowd = {"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 20, 20], "area": 400.0, "iscrowd": 1,
             "segmentation": {"size": [40, 48], "counts": [0, 40 * 48]}}
    unknown = {"id": 2, "image_id": 3, "category_id": 99, "bbox": [0, 0, 20, 20], "area": 400.0, "iscrowd": 0,
               "segmentation": [[0, 0, 20, 0, 20, 20]]}
    payload = {"images": [{"id": i + 1, "file_name": f, "height": 40, "width": 48}
                          for i, f in enumerate(("crowd.jpg", "none.jpg", "other_cat.jpg"))],
               "annotations": [crowd, unknown], "categories": [{"id": 5, "name": "five"}]}
    (tmp_path / "ann.json").write_text(json.dumps(payload))
    return CocoDetection(str(tmp_path / "ann.json"), str(tmp_path / "images"), TrainTransform((32,), "value", 64),
                         with_masks=with_masks, train=True, filter_empty_gt=filter_empty_gt)


def test_crowd_only_image_is_kept_background_only(tmp_path):
    ds = _dataset(tmp_path)
    assert [r["image_id"] for r in ds.records] == [1]  # no annotation / only an unknown category: dropped
    assert ds.skipped["image without annotations"] == 2 and ds.skipped["crowd annotation (ignore region)"] == 1
    images, targets, dropped = collate([ds[0]])
    assert dropped == 0 and images[0].shape == (3, 32, 38)
    assert targets[0]["boxes"].shape == (0, 4) and targets[0]["labels"].shape == (0,)
    assert targets[0]["masks"].shape[0] == 0


def test_without_filter_every_image_is_kept(tmp_path):
    assert [r["image_id"] for r in _dataset(tmp_path, filter_empty_gt=False).records] == [1, 2, 3]


def test_background_only_image_trains(tmp_path):
    """A crowd-only image through a tiny Mask R-CNN: finite losses (no positive RoI, zero mask loss)."""
    from detection.build import build_model
    from detection.configs import get_config

    ds = _dataset(tmp_path)
    images, targets, _ = collate([ds[0], ds[0]])
    model = build_model(get_config("tiny_test").model).train()
    losses = model(images, [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"].item() == 0.0
    sum(losses.values()).backward()
