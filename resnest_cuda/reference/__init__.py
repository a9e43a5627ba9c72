"""Pure-PyTorch references of every custom op: the executable specification the kernels are tested against."""

from .detection_ops import (
    batched_nms,
    batched_nms_fixed,
    multi_level_roi_align,
    nms,
    nms_fixed,
    pyramid_levels,
    roi_align,
)
from .split_attention import split_attention_combine, split_attention_pool

__all__ = [
    "batched_nms",
    "batched_nms_fixed",
    "multi_level_roi_align",
    "nms",
    "nms_fixed",
    "pyramid_levels",
    "roi_align",
    "split_attention_combine",
    "split_attention_pool",
]
