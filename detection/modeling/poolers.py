"""RoI feature extraction from a feature pyramid: each RoI is pooled with RoIAlign from the level its size maps to."""

import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import guard_or_false

import resnest_cuda


def assign_levels(boxes: torch.Tensor, num_levels: int, finest_scale: float = 56.0) -> torch.Tensor:
    """Pyramid level per box: floor(log2(sqrt(w * h) / finest_scale + 1e-6)) clamped to [0, num_levels - 1].

    boxes: [K, 4] xyxy -> int64 [K]. Level 0 is the finest given level (stride 4 for P2-P5): boxes up to ~112 px
    pool from it, each doubling of the box size moves one level coarser."""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).to(torch.int64)


def boxes_to_rois(boxes_per_image: list[torch.Tensor]) -> torch.Tensor:
    """list of [K_i, 4] boxes -> [sum K_i, 5] rois (batch_idx, x1, y1, x2, y2) as RoIAlign takes them."""
    rois = [
        torch.cat([boxes.new_full((boxes.shape[0], 1), float(i)), boxes], dim=1)
        for i, boxes in enumerate(boxes_per_image)
    ]
    return torch.cat(rois)


class MultiScaleRoIAlign(nn.Module):
    """forward(features, rois) -> [K, C, output_size, output_size].

    `features` are the maps of the strides in `featmap_strides` (e.g. P2-P5, extra levels ignored); `rois` are
    [K, 5] (batch_idx, x1, y1, x2, y2) in input-image pixels."""

    def __init__(
        self,
        output_size: int,
        featmap_strides: tuple[int, ...],
        sampling_ratio: int = 0,
        aligned: bool = True,
        finest_scale: float = 56.0,
    ):
        super().__init__()
        self.output_size = output_size
        self.featmap_strides = tuple(featmap_strides)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.finest_scale = finest_scale

    def forward(self, features: list[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        num_levels = len(self.featmap_strides)
        if len(features) < num_levels:
            raise ValueError(f"features: expected at least {num_levels} maps, got {len(features)}")
        first = features[0]
        out = first.new_zeros((rois.shape[0], first.shape[1], self.output_size, self.output_size))
        if guard_or_false(rois.shape[0] == 0):  # a shortcut only: traced (torch.export) graphs take the general path
            return out
        # RoI coordinates stay fp32 under autocast: in bf16 those of a 1333-px image would be off by up to 4 px.
        rois = rois.float()
        levels = assign_levels(rois[:, 1:], num_levels, self.finest_scale)
        for level in range(num_levels):
            idx = torch.nonzero(levels == level).squeeze(1)
            if guard_or_false(idx.numel() == 0):
                continue
            out[idx] = resnest_cuda.roi_align(
                features[level], rois[idx], self.output_size, 1.0 / self.featmap_strides[level],
                self.sampling_ratio, self.aligned,
            ).to(out.dtype)
        return out
