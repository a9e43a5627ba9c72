"""Anchors as mmdetection 2.x lays them out: at feature cell (i, j) of a level with stride s the anchors are centred
on (j * s, i * s) (centre offset 0), with width s * scale / sqrt(ratio) and height s * scale * sqrt(ratio) for
ratio = h / w. Per level the order is (H, W, A) with A = ratios x scales, ratio-major, which matches an RPN head whose
outputs are permuted (N, A, H, W) -> (N, H, W, A).
"""

import math

import torch
from torch import nn


def base_anchors(stride: int, scales: tuple[float, ...], ratios: tuple[float, ...]) -> torch.Tensor:
    """Anchors centred on (0, 0) for one level: [len(ratios) * len(scales), 4] xyxy, ratio-major."""
    out = []
    for ratio in ratios:
        h_ratio = math.sqrt(ratio)
        w_ratio = 1.0 / h_ratio
        for scale in scales:
            w = stride * w_ratio * scale
            h = stride * h_ratio * scale
            out.append([-0.5 * w, -0.5 * h, 0.5 * w, 0.5 * h])
    return torch.tensor(out, dtype=torch.float32)


def grid_anchors(
    base: torch.Tensor, feat_size: tuple[int, int], stride: int, with_cells: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shift `base` [A, 4] over an (H, W) grid with the given stride -> anchors [H * W * A, 4] in (H, W, A) order,
    and with `with_cells` each anchor's cell origin (j * stride, i * stride) [H * W * A, 2] (x, y; also its centre),
    else None."""
    h, w = feat_size
    shift_x = torch.arange(w, dtype=torch.float32, device=base.device) * stride
    shift_y = torch.arange(h, dtype=torch.float32, device=base.device) * stride
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)  # [H*W, 1, 4]
    cells = shifts[:, :, :2].expand(-1, base.shape[0], 2).reshape(-1, 2) if with_cells else None
    return (shifts + base[None]).reshape(-1, 4), cells


def in_grid_mask(cells: torch.Tensor, valid_size: tuple[int, int]) -> torch.Tensor:
    """bool [K]: anchors whose grid cell lies inside `valid_size` = (h, w) of the image (padded to the size divisor)
    rather than in the padding added to batch it with larger images. `cells` [K, 2]: the cells' origins
    (j * stride, i * stride) from `grid_anchors`, any mix of levels. Cell (i, j) of a level with stride s and H x W
    cells is inside when i < min(ceil(h / s), H) and j < min(ceil(w / s), W), that is i * s < h and j * s < w (i,
    j integers; i < H always): one comparison per axis for every level at once."""
    return (cells[:, 0] < valid_size[1]) & (cells[:, 1] < valid_size[0])


def inside_image_mask(anchors: torch.Tensor, image_size: tuple[int, int], allowed_border: float) -> torch.Tensor:
    """bool [N]: anchors lying within the image (h, w) extended by `allowed_border`; all True when it is < 0."""
    if allowed_border < 0:
        return torch.ones(anchors.shape[0], dtype=torch.bool, device=anchors.device)
    h, w = image_size
    return (
        (anchors[:, 0] >= -allowed_border)
        & (anchors[:, 1] >= -allowed_border)
        & (anchors[:, 2] < w + allowed_border)
        & (anchors[:, 3] < h + allowed_border)
    )


class AnchorGenerator(nn.Module):
    """Anchors for every level of a feature pyramid. No parameters; base anchors are kept as buffers."""

    def __init__(self, strides: tuple[int, ...], scales: tuple[float, ...], ratios: tuple[float, ...]):
        super().__init__()
        self.strides = tuple(strides)
        self.num_anchors = len(scales) * len(ratios)
        for level, stride in enumerate(self.strides):
            self.register_buffer(f"base_{level}", base_anchors(stride, tuple(scales), tuple(ratios)), persistent=False)

    def forward(self, feat_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """feat_sizes: (H, W) per level -> list of [H * W * A, 4] anchors per level."""
        return self.anchors_and_cells(feat_sizes, with_cells=False)[0]

    def anchors_and_cells(
        self, feat_sizes: list[tuple[int, int]], with_cells: bool = True
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """feat_sizes: (H, W) per level -> the anchors per level ([H * W * A, 4]) and their cell origins per level
        ([H * W * A, 2], for `in_grid_mask`; None without `with_cells`)."""
        if len(feat_sizes) != len(self.strides):
            raise ValueError(f"feat_sizes: expected {len(self.strides)} levels, got {len(feat_sizes)}")
        pairs = [
            grid_anchors(getattr(self, f"base_{level}"), size, stride, with_cells)
            for level, (size, stride) in enumerate(zip(feat_sizes, self.strides))
        ]
        return [a for a, _ in pairs], [c for _, c in pairs]
