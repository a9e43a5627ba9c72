"""Instance masks kept as polygons (mmdetection's `poly2mask=False`): no full-image `[N, H, W]` bitmaps in the data
path; mask targets are the GT polygons cropped to each positive RoI and rasterised at the mask head's size.

A polygon is a float64 array `[x0, y0, x1, y1, ...]` (at least 3 points) in pixels of the current image, continuous
coordinates (pixel i covers [i, i + 1)); an instance is a list of polygons (their union). Rasterisation is
pycocotools' (`frPyObjects`, `merge`, `decode`), as for COCO polygons everywhere in this project.
"""

from collections.abc import Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch


def rasterize(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Union of `polygons` as a uint8 [height, width] mask (0 / 1); parts outside the canvas are clipped."""
    if not polygons:
        return np.zeros((height, width), dtype=np.uint8)
    rles = mask_util.frPyObjects([np.asarray(p, dtype=np.float64).tolist() for p in polygons], height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(np.uint8)


class PolygonMasks:
    """N instances as polygons on an image of `height` x `width` pixels.

    Quacks like the `[N, H, W]` uint8 mask tensor where the data path needs it: `len`, `shape`, `to(device)`
    (a no-op: polygons stay on the host, their rasterised targets are moved instead)."""

    def __init__(self, polygons: Sequence[Sequence[np.ndarray]], height: int, width: int):
        self.polygons = [[np.asarray(p, dtype=np.float64).reshape(-1) for p in instance] for instance in polygons]
        for i, instance in enumerate(self.polygons):
            for p in instance:
                if p.size < 6 or p.size % 2:
                    raise ValueError(f"polygons[{i}]: expected [x0, y0, x1, y1, ...] with >= 3 points, got {p.size}"
                                     " numbers")
        self.height, self.width = int(height), int(width)

    def __len__(self) -> int:
        return len(self.polygons)

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.polygons), self.height, self.width

    def to(self, *args, **kwargs) -> "PolygonMasks":
        return self

    def resize(self, height: int, width: int) -> "PolygonMasks":
        """Scale to an image of height x width pixels (x by width / self.width, y by height / self.height)."""
        sx, sy = width / self.width, height / self.height
        scaled = [[_scale(p, sx, sy) for p in instance] for instance in self.polygons]
        return PolygonMasks(scaled, height, width)

    def hflip(self) -> "PolygonMasks":
        """Mirror left-right: x' = width - x."""
        flipped = []
        for instance in self.polygons:
            flipped.append([_mirror(p, self.width) for p in instance])
        return PolygonMasks(flipped, self.height, self.width)

    def to_bitmap(self) -> torch.Tensor:
        """uint8 [N, height, width], the full-image masks (the bitmap path's representation)."""
        out = np.zeros((len(self), self.height, self.width), dtype=np.uint8)
        for i, instance in enumerate(self.polygons):
            out[i] = rasterize(instance, self.height, self.width)
        return torch.from_numpy(out)

    def crop_and_rasterize(self, boxes: torch.Tensor, indices: torch.Tensor, size: int) -> torch.Tensor:
        """Mask targets: instance indices[k] cropped to boxes[k] (xyxy, this image's pixels) and rasterised on a
        size x size grid, as mmdetection's PolygonMasks.crop_and_resize (box sides below 1 pixel count as 1).

        boxes float [P, 4], indices int64 [P] -> float32 [P, size, size] of 0 / 1 on the host."""
        boxes_np = boxes.detach().to("cpu", torch.float64).numpy()
        indices_np = indices.detach().cpu().numpy()
        out = np.zeros((boxes_np.shape[0], size, size), dtype=np.float32)
        for k, ((x1, y1, x2, y2), index) in enumerate(zip(boxes_np, indices_np)):
            sx, sy = size / max(x2 - x1, 1.0), size / max(y2 - y1, 1.0)
            cropped = [_scale(_shift(p, -x1, -y1), sx, sy) for p in self.polygons[int(index)]]
            out[k] = rasterize(cropped, size, size)
        return torch.from_numpy(out)


def _scale(p: np.ndarray, sx: float, sy: float) -> np.ndarray:
    out = p.copy()
    out[0::2] *= sx
    out[1::2] *= sy
    return out


def _shift(p: np.ndarray, dx: float, dy: float) -> np.ndarray:
    out = p.copy()
    out[0::2] += dx
    out[1::2] += dy
    return out


def _mirror(p: np.ndarray, width: int) -> np.ndarray:
    out = p.copy()
    out[0::2] = width - out[0::2]
    return out
