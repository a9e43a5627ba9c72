"""mmdetection's resize (mmcv.imrescale, cv2 bilinear on uint8): hand-computed cases that CI always checks, and a
comparison with cv2.resize itself when OpenCV is installed."""

import random

import numpy as np
import pytest
import torch

from detection.data import transforms
from detection.data.resize import cv2_bilinear, mmcv_size
from detection.data.transforms import TrainTransform, resize


def _row(values, width):
    image = torch.tensor(values, dtype=torch.uint8).reshape(1, 1, -1)
    return cv2_bilinear(image, 1, width, use_opencv=False)[0, 0].tolist()


def test_upscale_by_hand():
    # x = (dx + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25: the outer two are clamped to the edge pixels.
    assert _row([0, 100], 4) == [0, 25, 75, 100]
    # 0.25 and 0.75 of one grey level: fixed-point rounding gives 0 and 1.
    assert _row([0, 1], 4) == [0, 0, 1, 1]


def test_downscale_without_antialiasing_by_hand():
    # 5 -> 2: x = 0.75 (pixels 0, 1, weights 0.25 / 0.75) and 3.25 (pixels 3, 4, weights 0.75 / 0.25);
    # pixel 2 (250) contributes nothing, as in cv2 (an antialiasing filter would spread it over both outputs).
    assert _row([10, 50, 250, 90, 30], 2) == [40, 75]


def _reference(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel-by-pixel loop over the rule in detection/data/resize.py ([H, W] uint8)."""
    def taps(src, dst, index, zero_outside):
        f = np.float32((index + 0.5) * (1.0 / (dst / src)) - 0.5)
        s = int(np.floor(f))
        f = np.float32(f - np.float32(s))
        if zero_outside and (s < 0 or s >= src - 1):
            f = np.float32(0.0)
        w0 = int(np.rint((np.float32(1.0) - f) * np.float32(2048)))
        return min(max(s, 0), src - 1), min(max(s + 1, 0), src - 1), w0, 2048 - w0

    src_h, src_w = image.shape
    out = np.zeros((height, width), np.uint8)
    for y in range(height):
        r0, r1, b0, b1 = taps(src_h, height, y, False)
        for x in range(width):
            c0, c1, a0, a1 = taps(src_w, width, x, True)
            h0 = int(image[r0, c0]) * a0 + int(image[r0, c1]) * a1
            h1 = int(image[r1, c0]) * a0 + int(image[r1, c1]) * a1
            out[y, x] = min(255, (((h0 >> 4) * b0 >> 16) + ((h1 >> 4) * b1 >> 16) + 2) >> 2)
    return out


@pytest.mark.parametrize("src, dst", [((5, 7), (9, 4)), ((6, 3), (2, 11)), ((4, 4), (4, 4)), ((1, 5), (3, 2))])
def test_matches_the_pixel_loop(src, dst):
    image = np.random.default_rng(sum(src + dst)).integers(0, 256, src, dtype=np.uint8)
    out = cv2_bilinear(torch.from_numpy(image)[None], *dst, use_opencv=False)[0].numpy()
    np.testing.assert_array_equal(out, _reference(image, *dst))


def test_float_input_and_output_and_errors():
    image = torch.tensor([[[0.0, 100.0]]])
    assert cv2_bilinear(image, 1, 4, use_opencv=False).dtype == torch.float32
    assert cv2_bilinear(image, 1, 4, use_opencv=False).tolist() == [[[0.0, 25.0, 75.0, 100.0]]]
    with pytest.raises(ValueError, match="image: expected"):
        cv2_bilinear(torch.zeros(4, 4), 2, 2)
    with pytest.raises(ValueError, match="size"):
        cv2_bilinear(torch.zeros(1, 4, 4), 0, 2)
    with pytest.raises(ValueError, match="data.resize_mode"):
        transforms.TestTransform(800, 1333, resize_mode="bicubic")


def test_mmcv_sizes_round_half_up():
    assert mmcv_size(5, 7, 0.5) == (3, 4)  # 2.5 -> 3 (Python's round would give 2)
    assert mmcv_size(1536, 2048, 800 / 1536) == (800, 1067)


def test_test_transform_mmcv_mode_on_a_large_image():
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 1536, 2048)).astype(np.float32))
    target = {"boxes": torch.tensor([[0.0, 0.0, 2048.0, 1536.0]]), "labels": torch.tensor([0])}
    out, out_target = transforms.TestTransform(800, 1333)(image, target)
    assert out.shape == (3, 800, 1067) and out.dtype == torch.float32
    assert torch.equal(out, out.round())
    expected = cv2_bilinear(image.to(torch.uint8), 800, 1067).float()
    assert torch.equal(out, expected)
    torch.testing.assert_close(out_target["boxes"], torch.tensor([[0.0, 0.0, 1067.0, 800.0]]))
    antialiased, _ = transforms.TestTransform(800, 1333, resize_mode="antialias")(image, None)
    assert (antialiased - out).abs().max() > 10  # the option is kept and really differs on a downscale


def test_train_transform_uses_the_mode():
    image = torch.arange(3 * 8 * 10, dtype=torch.float32).reshape(3, 8, 10) % 256
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    out, _ = TrainTransform((5,), "value", 100, flip_prob=0.0)(image, target, random.Random(0))
    assert torch.equal(out, resize(image, None, 5 / 8, "mmcv")[0]) and out.shape == (3, 5, 6)



@pytest.mark.parametrize("src, scale", [((480, 640), 800 / 480), ((1536, 2048), 800 / 1536), ((427, 640), 1.873),
                                        ((333, 501), 2.4), ((100, 130), 0.37), ((64, 96), 0.5)])
def test_matches_cv2_resize(src, scale):
    cv2_module = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
    new_h, new_w = mmcv_size(*src, scale)
    expected = cv2_module.resize(noise, (new_w, new_h), interpolation=cv2_module.INTER_LINEAR)
    chw = torch.from_numpy(noise).permute(2, 0, 1)
    out = cv2_bilinear(chw, new_h, new_w, use_opencv=False).permute(1, 2, 0).numpy()
    diff = np.abs(out.astype(np.int32) - expected.astype(np.int32))
    # Identical on OpenCV 5.0 / x86-64; allow OpenCV builds whose scalar tails round differently by one level.
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    # the default path calls OpenCV itself, for uint8 and float images and for a single channel
    assert np.array_equal(cv2_bilinear(chw, new_h, new_w).permute(1, 2, 0).numpy(), expected)
    assert torch.equal(cv2_bilinear(chw.float(), new_h, new_w), torch.from_numpy(expected).permute(2, 0, 1).float())
    single = cv2_bilinear(chw[:1], new_h, new_w)
    assert single.shape == (1, new_h, new_w) and np.array_equal(single[0].numpy(), expected[..., 0])
