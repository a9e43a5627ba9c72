"""Image/target transforms for detection: multi-scale resize, horizontal flip, test resize.

An image is a uint8 or float32 tensor [3, H, W] with RGB values in 0–255. A target is a dict with `boxes` float32
[N, 4] (x1, y1, x2, y2 in pixels of the current image), `labels` int64 [N] and optionally `masks` (uint8 [N, H, W]
or `PolygonMasks`, scaled and mirrored as polygons); other keys (`image_id`, `orig_size`) pass through unchanged.
Random choices come from an explicit `random.Random` so that a sample's augmentation is a function of (seed, epoch,
index) and a resumed run sees the same data.
"""

import random

import torch
import torch.nn.functional as F

from .polygons import PolygonMasks
from .resize import RESIZE_MODES, cv2_bilinear, mmcv_size


def scale_for(height: int, width: int, short_side: int, max_size: int) -> float:
    """Scale factor that brings the short side to `short_side` unless the long side would exceed `max_size`."""
    short, long = min(height, width), max(height, width)
    return min(short_side / short, max_size / long)


def check_resize_mode(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise ValueError(f"data.resize_mode: expected one of {RESIZE_MODES}, got {mode!r}")
    return mode


def resize(image: torch.Tensor, target: dict | None, scale: float,
           mode: str = "mmcv") -> tuple[torch.Tensor, dict | None]:
    """Resize by `scale`; boxes scale by the realised per-axis ratio, masks use nearest neighbour (binary).

    mode "mmcv" (mmdetection's mmcv.imrescale, cv2 backend): sizes int(size * scale + 0.5) and OpenCV's bilinear on
    uint8 pixels, without antialiasing (detection/data/resize.py); the result has the input's dtype (uint8 images
    stay uint8). mode "antialias": sizes round(size * scale), float bilinear, antialiased when shrinking (float32
    result)."""
    _, height, width = image.shape
    if check_resize_mode(mode) == "mmcv":
        new_h, new_w = mmcv_size(height, width, scale)
    else:
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    if (new_h, new_w) == (height, width):
        return image, target
    if mode == "mmcv":
        image = cv2_bilinear(image, new_h, new_w).to(image.dtype)
    else:
        image = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False,
                              antialias=scale < 1.0)[0]
    if target is None:
        return image, None
    target = dict(target)
    ratio = torch.tensor([new_w / width, new_h / height, new_w / width, new_h / height], dtype=torch.float32)
    target["boxes"] = target["boxes"] * ratio
    if isinstance(target.get("masks"), PolygonMasks):
        target["masks"] = target["masks"].resize(new_h, new_w)
    elif "masks" in target:
        masks = target["masks"]
        if masks.shape[0] > 0:
            # nearest neighbour on the uint8 masks themselves (exact, 4x less memory than a float copy)
            masks = F.interpolate(masks[None].to(torch.uint8), size=(new_h, new_w), mode="nearest")[0]
        else:
            masks = masks.new_zeros((0, new_h, new_w))
        target["masks"] = masks
    return image, target


def hflip(image: torch.Tensor, target: dict | None) -> tuple[torch.Tensor, dict | None]:
    """Mirror left–right: x1' = W − x2, x2' = W − x1 (boxes in continuous pixel coordinates)."""
    width = image.shape[-1]
    image = image.flip(-1)
    if target is None:
        return image, None
    target = dict(target)
    boxes = target["boxes"]
    target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    if isinstance(target.get("masks"), PolygonMasks):
        target["masks"] = target["masks"].hflip()
    elif "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image, target


class TrainTransform:
    """Multi-scale resize then random horizontal flip.

    mode "range": short side drawn uniformly from the integers in [min(scales), max(scales)];
    mode "value": short side chosen among `scales`. The long side is capped at `max_size` in both modes.
    """

    def __init__(self, scales: tuple[int, ...], mode: str = "range", max_size: int = 1333, flip_prob: float = 0.5,
                 resize_mode: str = "mmcv"):
        if mode not in ("range", "value"):
            raise ValueError(f"scale_mode must be 'range' or 'value', got {mode!r}")
        if len(scales) == 0:
            raise ValueError("train_scales must hold at least one size")
        self.scales = tuple(int(s) for s in scales)
        self.mode = mode
        self.max_size = max_size
        self.flip_prob = flip_prob
        self.resize_mode = check_resize_mode(resize_mode)

    def __call__(self, image: torch.Tensor, target: dict, rng: random.Random) -> tuple[torch.Tensor, dict]:
        if self.mode == "range":
            short_side = rng.randint(min(self.scales), max(self.scales))
        else:
            short_side = rng.choice(self.scales)
        _, height, width = image.shape
        image, target = resize(image, target, scale_for(height, width, short_side, self.max_size), self.resize_mode)
        if rng.random() < self.flip_prob:
            image, target = hflip(image, target)
        return image, target


class TestTransform:
    """Deterministic resize keeping the aspect ratio: short side `scale`, long side at most `max_size`; with
    `resize_mode` "mmcv" exactly mmdetection's test resize."""

    def __init__(self, scale: int, max_size: int = 1333, resize_mode: str = "mmcv"):
        self.scale = scale
        self.max_size = max_size
        self.resize_mode = check_resize_mode(resize_mode)

    def __call__(self, image: torch.Tensor, target: dict | None, rng: random.Random | None = None):
        _, height, width = image.shape
        return resize(image, target, scale_for(height, width, self.scale, self.max_size), self.resize_mode)
