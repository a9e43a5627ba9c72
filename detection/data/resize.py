"""Image resizing as mmdetection does it (mmcv.imrescale with the cv2 backend, bilinear): output sizes
`int(size * scale + 0.5)`, then OpenCV's INTER_LINEAR on uint8 pixels — half-pixel centres, no antialiasing when
shrinking, 11-bit fixed-point weights and uint8 output.

`cv2_bilinear` calls OpenCV when it is installed and otherwise reproduces its integer arithmetic in PyTorch, so
the project does not depend on OpenCV:

- per output column x (and likewise per row): `f = float32((x + 0.5) * (1 / (out / in)) - 0.5)`, `s = floor(f)`,
  `f -= s`; weights `w0 = rint((1 - f) * 2048)` and `w1 = 2048 - w0` on the source pixels `s` and `s + 1`;
- columns: where `s < 0` or `s >= in - 1` the weights become (2048, 0) on the clamped pixel; rows keep their
  weights and only the row indices are clamped to the image (OpenCV treats the two axes this way);
- horizontal pass in int32: `h = p[s] * w0 + p[s + 1] * w1`;
- vertical pass with OpenCV's vectorised rounding: `(((h0 >> 4) * w0) >> 16) + (((h1 >> 4) * w1) >> 16)`, then
  `(v + 2) >> 2`, saturated to 0..255.

On OpenCV 5.0 (x86-64) the PyTorch version was identical to `cv2.resize(..., interpolation=cv2.INTER_LINEAR)` for
every pixel of the up- and downscales tried (tests/data/test_data_resize.py compares the two when OpenCV is
installed). OpenCV is used when present because it is faster: resizing a float 2048x1536 image to 1067x800 took
about 0.1 s with OpenCV (2 ms of it in cv2.resize, the rest converting to and from uint8) and 0.25-0.5 s with the
PyTorch version, against 0.03-0.06 s for the antialiased float resize (a heavily loaded 2-core CPU).
"""

import numpy as np
import torch

try:  # optional: the same result, faster (see cv2_bilinear)
    import cv2 as _cv2
except ImportError:
    _cv2 = None

RESIZE_MODES = ("mmcv", "antialias")
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def mmcv_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """mmcv.rescale_size: (int(height * scale + 0.5), int(width * scale + 0.5)), at least 1 pixel each."""
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def _axis_coefficients(src: int, dst: int, zero_outside: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR taps along one axis: (first source index, second source index, first weight) with
    weights in 1/2048 units; the second weight is 2048 - first."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if zero_outside:
        outside = (s < 0) | (s >= src - 1)
        f[outside] = 0.0
    w0 = np.rint((np.float32(1.0) - f) * np.float32(_COEF_SCALE)).astype(np.int64)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), w0


def cv2_bilinear(image: torch.Tensor, height: int, width: int, use_opencv: bool | None = None) -> torch.Tensor:
    """Resize [C, H, W] (uint8, or float holding 0-255 values: clamped and rounded first) to [C, height, width]
    as cv2.resize(INTER_LINEAR) does on uint8 images. Returns uint8 for uint8 input, else float32 (integer values).

    use_opencv: None (default) calls OpenCV when it is installed — the same result, faster — and the PyTorch
    implementation below otherwise; True / False force one of them."""
    if image.dim() != 3:
        raise ValueError(f"image: expected [C, H, W], got shape {tuple(image.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"size: expected positive height and width, got ({height}, {width})")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"image: expected a non-empty image, got shape {tuple(image.shape)}")
    if use_opencv and _cv2 is None:
        raise ImportError("cv2_bilinear(use_opencv=True): OpenCV (cv2) is not installed")
    pixels = image if image.dtype == torch.uint8 else image.round().clamp_(0, 255).to(torch.uint8)
    if _cv2 is not None and use_opencv is not False and image.device.type == "cpu" and image.shape[0] <= 4:
        array = np.ascontiguousarray(pixels.numpy().transpose(1, 2, 0))
        array = _cv2.resize(array, (width, height), interpolation=_cv2.INTER_LINEAR)
        out = torch.from_numpy(array.reshape(height, width, -1))
    else:
        out = _bilinear_fixed_point(pixels.permute(1, 2, 0), height, width)
    out = out.permute(2, 0, 1)
    if image.dtype == torch.uint8:
        return out.contiguous()
    return out.to(torch.float32, memory_format=torch.contiguous_format)


def _bilinear_fixed_point(hwc: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """OpenCV's arithmetic (module docstring) on [H, W, C] integer-valued pixels -> uint8 [height, width, C].
    Channels last, so that both passes gather whole pixels or rows (index_select), not single values."""
    src_h, src_w, _ = hwc.shape
    device = hwc.device
    x0, x1, a0 = (torch.from_numpy(v).to(device) for v in _axis_coefficients(src_w, width, zero_outside=True))
    y0, y1, b0 = (torch.from_numpy(v).to(device) for v in _axis_coefficients(src_h, height, zero_outside=False))
    a0, b0 = a0.to(torch.int32)[:, None], b0.to(torch.int32)[:, None, None]
    a1, b1 = _COEF_SCALE - a0, _COEF_SCALE - b0
    pixels = hwc.to(torch.int32, memory_format=torch.contiguous_format)
    horizontal = pixels.index_select(1, x0) * a0 + pixels.index_select(1, x1) * a1  # [H, width, C], <= 255 * 2048
    horizontal >>= 4
    out = (horizontal.index_select(0, y0) * b0) >> 16
    out += (horizontal.index_select(0, y1) * b1) >> 16
    out += 2
    out >>= 2
    return out.clamp_(0, 255).to(torch.uint8)
