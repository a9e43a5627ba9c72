"""Split attention in plain PyTorch (R = radix, K = cardinality, C = channels per split)."""

import torch


def split_attention_pool(x: torch.Tensor, radix: int) -> torch.Tensor:
    """``[B, R*C, H, W]`` (radix-major) -> ``[B, C]``: mean over H, W of the sum over the R splits."""
    b, rc, h, w = x.shape
    return x.reshape(b, radix, rc // radix, h, w).sum(dim=1).mean(dim=(2, 3))


def radix_softmax(logits: torch.Tensor, radix: int, cardinality: int) -> torch.Tensor:
    """Cardinal-major logits ``[B, R*C(, 1, 1)]`` -> radix-major attention ``[B, R, C]``.

    Softmax over the R splits when R > 1, sigmoid when R == 1.
    """
    b, rc = logits.shape[0], logits.shape[1]
    a = logits.reshape(b, rc)
    if radix == 1:
        return a.sigmoid().reshape(b, 1, rc)
    # (B, K*R*C/K) -> (B, K, R, C/K) -> (B, R, K, C/K): softmax over R, flatten back radix-major.
    a = a.reshape(b, cardinality, radix, rc // (radix * cardinality)).transpose(1, 2)
    return a.softmax(dim=1).reshape(b, radix, rc // radix)


def split_attention_combine(x: torch.Tensor, logits: torch.Tensor, radix: int, cardinality: int = 1) -> torch.Tensor:
    """``out[b, j] = sum_r att[b, r, j] * x[b, r*C + j]`` with ``att = radix_softmax(logits)``; ``[B, C, H, W]``."""
    b, rc, h, w = x.shape
    att = radix_softmax(logits, radix, cardinality).reshape(b, radix, rc // radix, 1, 1)
    return (x.reshape(b, radix, rc // radix, h, w) * att).sum(dim=1)
