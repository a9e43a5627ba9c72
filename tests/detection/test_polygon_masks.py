"""Polygon mask targets (mmdetection's poly2mask=False): hand-computed crops, agreement with the bitmap path on simple
shapes, polygon transforms, the dataset switch and a training step."""

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from detection.data.coco import CocoDetection
from detection.data.polygons import PolygonMasks, rasterize
from detection.data.transforms import TrainTransform, hflip, resize
from detection.modeling.mask_head import mask_targets


def _square(x1, y1, x2, y2):
    return [np.array([x1, y1, x2, y1, x2, y2, x1, y2], dtype=np.float64)]


def test_crop_and_rasterize_by_hand():
    masks = PolygonMasks([_square(2, 2, 6, 6), _square(0, 0, 8, 8) + [np.array([20.0, 20, 30, 20, 25, 30])]], 32, 32)
    boxes = torch.tensor([[2.0, 2.0, 10.0, 10.0], [0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 16.0, 16.0], [4.0, 4.0, 4.0, 4.5]])
    out = mask_targets(masks, boxes, torch.tensor([0, 0, 1, 0]), 4)
    assert out.shape == (4, 4, 4) and out.dtype == torch.float32
    # [2, 6]^2 in the box [2, 10]^2 at 4 x 4 (2 px per cell): the top-left 2 x 2 cells
    expected0 = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(out[0], expected0)
    torch.testing.assert_close(out[1], expected0.roll((1, 1), (0, 1)))  # [2, 6]^2 in [0, 8]^2: the centre
    torch.testing.assert_close(out[2], expected0)  # [0, 8]^2 in [0, 16]^2; the triangle lies outside the box
    # a box thinner than one pixel counts as 1 x 1 px: [4, 5]^2 lies inside the square
    torch.testing.assert_close(out[3], torch.ones(4, 4))
    # with `valid`, only the valid rows are rasterised (the others may hold any index, here out of range: zeros)
    valid = torch.tensor([True, False, True, False])
    partial = mask_targets(masks, boxes, torch.tensor([0, 7, 1, 9]), 4, valid)
    torch.testing.assert_close(partial[valid], out[valid])
    assert not partial[~valid].any()


def test_empty_and_bad_polygons():
    assert mask_targets(PolygonMasks([], 8, 8), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 4).shape == (
        0, 4, 4)
    with pytest.raises(ValueError, match=r"polygons\[0\]: expected"):
        PolygonMasks([[np.array([1.0, 2.0, 3.0, 4.0])]], 8, 8)


SHAPES = [
    _square(8, 8, 36, 36),  # pixel-aligned square
    [np.array([10.0, 50.0, 50.0, 50.0, 30.0, 14.0])],  # triangle
    [np.array([40.0, 5.0, 58.0, 20.0, 43.0, 38.0, 25.0, 23.0])],  # rotated square
]


def _bitmap_and_polygons():
    polygons = PolygonMasks(SHAPES, 64, 64)
    return polygons, polygons.to_bitmap()


def test_pixel_aligned_box_equals_the_bitmap_path():
    polygons, bitmap = _bitmap_and_polygons()
    boxes = torch.tensor([[8.0, 8.0, 36.0, 36.0], [4.0, 4.0, 32.0, 32.0]])
    idx = torch.tensor([0, 0])
    from_polygons, from_bitmap = mask_targets(polygons, boxes, idx, 14), mask_targets(bitmap, boxes, idx, 14)
    assert from_polygons[0].eq(1).all()
    torch.testing.assert_close(from_polygons, from_bitmap, rtol=0, atol=0)


@pytest.mark.parametrize("jitter", [0.0, 3.0])
def test_agrees_with_the_bitmap_path_on_simple_shapes(jitter):
    polygons, bitmap = _bitmap_and_polygons()
    gen = torch.Generator().manual_seed(0)
    gt_boxes = torch.tensor([[8.0, 8.0, 36.0, 36.0], [10.0, 14.0, 50.0, 50.0], [25.0, 5.0, 58.0, 38.0]])
    boxes = (gt_boxes.repeat(4, 1) + (torch.rand(12, 4, generator=gen) * 2 - 1) * jitter).clamp(0, 64)
    idx = torch.arange(3).repeat(4)
    from_polygons, from_bitmap = mask_targets(polygons, boxes, idx, 28), mask_targets(bitmap, boxes, idx, 28)
    assert from_polygons.sum() > 0.3 * from_polygons.numel()  # not trivially empty
    disagree = (from_polygons != from_bitmap).float().mean(dim=(1, 2))
    assert disagree.max() < 0.06, disagree  # boundary pixels only
    assert disagree.mean() < 0.03


def test_resize_and_flip_follow_the_bitmap_transforms():
    polygons, bitmap = _bitmap_and_polygons()
    image = torch.zeros(3, 64, 64)
    boxes = torch.zeros(3, 4)
    flipped_p = hflip(image, {"boxes": boxes, "masks": polygons})[1]["masks"]
    flipped_b = hflip(image, {"boxes": boxes, "masks": bitmap})[1]["masks"]
    assert isinstance(flipped_p, PolygonMasks)
    assert torch.equal(flipped_p.to_bitmap()[0], flipped_b[0])  # pixel-aligned: exact
    resized_p = resize(image, {"boxes": boxes, "masks": polygons}, 1.5)[1]["masks"]
    resized_b = resize(image, {"boxes": boxes, "masks": bitmap}, 1.5)[1]["masks"]
    assert resized_p.shape == resized_b.shape == (3, 96, 96)
    assert torch.equal(resized_p.to_bitmap()[0], resized_b[0])  # [8, 36] -> [12, 54]
    raster = resized_p.to_bitmap().bool()
    iou = (raster & resized_b.bool()).sum((1, 2)) / (raster | resized_b.bool()).sum((1, 2))
    assert iou.min() > 0.9


def test_rasterize_union():
    out = rasterize(_square(0, 0, 2, 2) + _square(2, 2, 4, 4), 4, 4)
    assert out.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]


def _dataset(tmp_path, poly2mask):
    (tmp_path / "images").mkdir(exist_ok=True)
    for name in ("poly.jpg", "rle.jpg"):
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "images" / name)
    rle_mask = np.zeros((64, 64), np.uint8)
    rle_mask[10:20, 10:30] = 1
    import pycocotools.mask as mask_util

    rle = mask_util.encode(np.asfortranarray(rle_mask))
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 1.0,
             "bbox": [float(p[0].min()), float(p[0][1::2].min()), 30.0, 30.0],
             "segmentation": [p[0].tolist()]} for i, p in enumerate(SHAPES)]
    anns.append({"id": 9, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 200.0, "bbox": [10, 10, 20, 10],
                 "segmentation": {"size": [64, 64], "counts": rle["counts"].decode("ascii")}})
    payload = {"images": [{"id": 1, "file_name": "poly.jpg", "height": 64, "width": 64},
                          {"id": 2, "file_name": "rle.jpg", "height": 64, "width": 64}],
               "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "ann.json").write_text(json.dumps(payload))
    transform = TrainTransform((96,), "value", 200, flip_prob=1.0)
    return CocoDetection(str(tmp_path / "ann.json"), str(tmp_path / "images"), transform, with_masks=True,
                         train=True, poly2mask=poly2mask)


def test_dataset_keeps_polygons_unless_rle(tmp_path):
    polys, bitmaps = _dataset(tmp_path, poly2mask=False), _dataset(tmp_path, poly2mask=True)
    _, target = polys[0]
    assert isinstance(target["masks"], PolygonMasks) and target["masks"].shape == (3, 96, 96)
    _, reference = bitmaps[0]
    assert reference["masks"].shape == (3, 96, 96) and reference["masks"].dtype == torch.uint8
    raster = target["masks"].to_bitmap().bool()
    iou = (raster & reference["masks"].bool()).sum((1, 2)) / (raster | reference["masks"].bool()).sum((1, 2))
    assert iou.min() > 0.9  # scaled x1.5 and flipped the same way
    _, rle_target = polys[1]
    assert isinstance(rle_target["masks"], torch.Tensor) and rle_target["masks"].shape == (1, 96, 96)


def test_seed_mask_configs_use_polygons():
    from detection.configs import get_config

    for name in ("mask_rcnn_s50_fpn_syncbn-backbone+head_mstrain_1x_coco",
                 "cascade_mask_rcnn_s101_fpn_syncbn-backbone+head_mstrain_1x_coco"):
        assert get_config(name).data.poly2mask is False
    assert get_config("shapes_mask_rcnn_s14").data.poly2mask is True


def test_training_step_with_polygon_targets(tmp_path):
    from detection.build import build_model
    from detection.configs import get_config
    from detection.engine.train import _to_device

    polys, bitmaps = _dataset(tmp_path, poly2mask=False), _dataset(tmp_path, poly2mask=True)
    model = build_model(get_config("tiny_test").model).train()
    losses = {}
    for kind, ds in (("polygons", polys), ("bitmaps", bitmaps)):
        image, target = ds[0]
        images, targets = _to_device([image, image], [target, target], torch.device("cpu"))
        torch.manual_seed(0)
        random.seed(0)
        losses[kind] = model(images, targets)
    assert all(torch.isfinite(v) for v in losses["polygons"].values())
    assert losses["polygons"]["loss_mask"] > 0
    torch.testing.assert_close(losses["polygons"]["loss_mask"], losses["bitmaps"]["loss_mask"], rtol=0.1, atol=0)
    losses["polygons"]["loss_mask"].backward()
