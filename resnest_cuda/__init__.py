"""resnest-cuda: fused split-attention kernels, ResNeSt backbones and the ops a two-stage detector needs."""

from . import reference
from .detection_ops import batched_nms, nms, roi_align
from .ops import cuda_kernels_available, split_attention_combine, split_attention_pool

__all__ = [
    "batched_nms",
    "cuda_kernels_available",
    "nms",
    "reference",
    "roi_align",
    "split_attention_combine",
    "split_attention_pool",
]

__version__ = "0.1.0"
