"""resnest-cuda: fused split-attention kernels, ResNeSt backbones and the ops a two-stage detector needs."""

from . import reference
from .detection_ops import batched_nms, batched_nms_fixed, multi_level_roi_align, nms, nms_fixed, roi_align
from .norm import FrozenBatchNorm2d
from .ops import cuda_kernels_available, split_attention, split_attention_combine, split_attention_pool
from .resnest import Bottleneck, ResNeSt, resnest14, resnest26, resnest50, resnest101, resnest200, resnest269
from .splat import SplitAttentionConv2d
from .weights import load_pretrained

__all__ = [
    "Bottleneck",
    "FrozenBatchNorm2d",
    "ResNeSt",
    "SplitAttentionConv2d",
    "batched_nms",
    "batched_nms_fixed",
    "cuda_kernels_available",
    "load_pretrained",
    "multi_level_roi_align",
    "nms",
    "nms_fixed",
    "reference",
    "resnest14",
    "resnest26",
    "resnest50",
    "resnest101",
    "resnest200",
    "resnest269",
    "roi_align",
    "split_attention",
    "split_attention_combine",
    "split_attention_pool",
]

__version__ = "0.1.0"
