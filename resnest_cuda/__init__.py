"""resnest-cuda: fused split-attention kernels, ResNeSt backbones and the ops a two-stage detector needs."""

from . import reference
from .ops import cuda_kernels_available, split_attention_combine, split_attention_pool

__all__ = [
    "cuda_kernels_available",
    "reference",
    "split_attention_combine",
    "split_attention_pool",
]

__version__ = "0.1.0"
