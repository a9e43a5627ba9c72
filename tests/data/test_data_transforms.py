import random

import pytest
import torch

from detection.data import transforms
from detection.data.transforms import TrainTransform, hflip, resize, scale_for


def _sample(h=40, w=60):
    image = torch.arange(3 * h * w, dtype=torch.float32).reshape(3, h, w) % 255
    boxes = torch.tensor([[4.0, 6.0, 20.0, 30.0], [30.0, 2.0, 58.0, 12.0]])
    masks = torch.zeros((2, h, w), dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
        mask[y1:y2, x1:x2] = 1
    return image, {"boxes": boxes, "labels": torch.tensor([0, 2]), "masks": masks, "image_id": 5}


def _mask_boxes(masks):
    """Tight xyxy boxes of binary masks [N, H, W] (x2, y2 exclusive)."""
    out = []
    for mask in masks:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(out, dtype=torch.float32)


def test_flip_twice_is_identity():
    image, target = _sample()
    image2, target2 = hflip(*hflip(image, target))
    assert torch.equal(image2, image)
    assert torch.equal(target2["boxes"], target["boxes"]) and torch.equal(target2["masks"], target["masks"])
    assert target2["image_id"] == 5 and torch.equal(target2["labels"], target["labels"])


def test_flip_keeps_boxes_and_masks_aligned():
    image, target = _sample()
    flipped_image, flipped = hflip(image, target)
    torch.testing.assert_close(flipped["boxes"], torch.tensor([[40.0, 6.0, 56.0, 30.0], [2.0, 2.0, 30.0, 12.0]]))
    torch.testing.assert_close(_mask_boxes(flipped["masks"]), flipped["boxes"])
    assert torch.equal(flipped_image[:, :, 0], image[:, :, -1])


def test_resize_scales_boxes_and_masks():
    image, target = _sample(40, 60)
    resized_image, resized = resize(image, target, 0.5)
    assert resized_image.shape == (3, 20, 30) and resized["masks"].shape == (2, 20, 30)
    torch.testing.assert_close(resized["boxes"], target["boxes"] * 0.5)
    torch.testing.assert_close(_mask_boxes(resized["masks"]), resized["boxes"], atol=1.0, rtol=0)
    assert set(resized["masks"].unique().tolist()) <= {0, 1}
    up_image, up = resize(image, target, 1.5)
    assert up_image.shape == (3, 60, 90)
    torch.testing.assert_close(_mask_boxes(up["masks"]), up["boxes"], atol=1.0, rtol=0)


def test_scale_for_caps_long_side():
    assert scale_for(40, 60, short_side=20, max_size=1000) == pytest.approx(0.5)
    assert scale_for(40, 60, short_side=100, max_size=90) == pytest.approx(1.5)  # 60 * 2.5 > 90 → capped
    image, _ = _sample(40, 60)
    out, _ = transforms.TestTransform(100, 90)(image, None)
    assert out.shape == (3, 60, 90)  # keeps the ratio, long side at the cap


def test_train_transform_scale_modes_and_determinism():
    image, target = _sample(40, 60)
    value = TrainTransform((20, 30), mode="value", max_size=1000, flip_prob=0.5)
    shorts = {value(image, target, random.Random(i))[0].shape[1] for i in range(30)}
    assert shorts == {20, 30}
    ranged = TrainTransform((20, 30), mode="range", max_size=1000, flip_prob=0.0)
    shorts = {ranged(image, target, random.Random(i))[0].shape[1] for i in range(60)}
    assert min(shorts) >= 20 and max(shorts) <= 30 and len(shorts) > 4
    a = value(image, target, random.Random(7))
    b = value(image, target, random.Random(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    with pytest.raises(ValueError, match="scale_mode"):
        TrainTransform((20,), mode="ratio")


def test_empty_targets_survive_transforms():
    image = torch.zeros(3, 40, 60)
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "masks": torch.zeros(0, 40, 60, dtype=torch.uint8)}
    out_image, out = TrainTransform((20,), flip_prob=1.0)(image, target, random.Random(0))
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 20, 30)


def test_uint8_images_stay_uint8_where_pixels_stay_integers():
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (3, 40, 60), generator=g, dtype=torch.uint8)
    masks = (torch.rand(2, 40, 60, generator=g) > 0.5).to(torch.uint8)
    target = {"boxes": torch.tensor([[1.0, 2, 30, 20], [5, 5, 50, 35]]), "labels": torch.tensor([0, 1]),
              "masks": masks}
    out, out_target = resize(pixels, target, 1.5, "mmcv")
    assert out.dtype == torch.uint8 and out.shape == (3, 60, 90)
    assert torch.equal(out.float(), resize(pixels.float(), target, 1.5, "mmcv")[0])  # same pixels as from float
    assert out_target["masks"].dtype == torch.uint8 and out_target["masks"].shape == (2, 60, 90)
    assert torch.equal(out_target["masks"], resize(pixels.float(), target, 1.5, "mmcv")[1]["masks"])
    assert hflip(out, None)[0].dtype == torch.uint8
    smooth, _ = resize(pixels, None, 0.5, "antialias")  # fractional pixels: float32
    assert smooth.dtype == torch.float32
    torch.testing.assert_close(smooth, resize(pixels.float(), None, 0.5, "antialias")[0])
