"""Pure-PyTorch references of every custom op: the executable specification the kernels are tested against."""

from .split_attention import split_attention_combine, split_attention_pool

__all__ = ["split_attention_combine", "split_attention_pool"]
