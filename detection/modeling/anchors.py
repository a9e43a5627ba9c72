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


def grid_anchors(base: torch.Tensor, feat_size: tuple[int, int], stride: int) -> torch.Tensor:
    """Shift `base` [A, 4] over an (H, W) grid with the given stride -> [H * W * A, 4] in (H, W, A) order."""
    h, w = feat_size
    shift_x = torch.arange(w, dtype=torch.float32, device=base.device) * stride
    shift_y = torch.arange(h, dtype=torch.float32, device=base.device) * stride
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)  # [H*W, 1, 4]
    return (shifts + base[None]).reshape(-1, 4)


def valid_anchor_mask(
    feat_size: tuple[int, int], valid_size: tuple[int, int], stride: int, num_anchors: int, device: torch.device
) -> torch.Tensor:
    """bool [H * W * A]: anchors whose grid cell lies inside `valid_size` = (h, w) of the image (padded to the size
    divisor) rather than in the padding added to batch it with larger images."""
    h, w = feat_size
    valid_h = min(math.ceil(valid_size[0] / stride), h)
    valid_w = min(math.ceil(valid_size[1] / stride), w)
    valid_y = torch.arange(h, device=device) < valid_h
    valid_x = torch.arange(w, device=device) < valid_w
    valid = valid_y[:, None] & valid_x[None, :]  # [H, W]
    return valid[:, :, None].expand(h, w, num_anchors).reshape(-1)


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
        if len(feat_sizes) != len(self.strides):
            raise ValueError(f"feat_sizes: expected {len(self.strides)} levels, got {len(feat_sizes)}")
        return [
            grid_anchors(getattr(self, f"base_{level}"), size, stride)
            for level, (size, stride) in enumerate(zip(feat_sizes, self.strides))
        ]
