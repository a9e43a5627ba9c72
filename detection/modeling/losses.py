"""Losses as pure functions. Each sums element losses and divides by an explicit `avg_factor` (mmdetection's
normalisation: the RPN divides by the number of sampled anchors, the R-CNN by the number of sampled RoIs).
`avg_factor` may be a tensor, so the normaliser never has to be read on the host."""

import torch
import torch.nn.functional as F


def _acc(x: torch.Tensor) -> torch.Tensor:
    """The loss's computation dtype: fp32 for half/bfloat16/fp32 inputs (autocast leaves logits in half), fp64
    stays fp64."""
    return x if x.dtype == torch.float64 else x.float()


def _normalise(total: torch.Tensor, avg_factor: float | torch.Tensor) -> torch.Tensor:
    if isinstance(avg_factor, torch.Tensor):
        return total / avg_factor.clamp(min=1).to(total.dtype)
    return total / max(float(avg_factor), 1.0)


def sigmoid_ce_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, avg_factor: float | torch.Tensor
) -> torch.Tensor:
    """Binary cross entropy with logits. logits, targets (0/1), weights: [N] float -> scalar."""
    loss = F.binary_cross_entropy_with_logits(_acc(logits), targets.to(_acc(logits).dtype), reduction="none")
    return _normalise((loss * weights).sum(), avg_factor)


def softmax_ce_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    avg_factor: float | torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross entropy. logits [N, C] float, labels int64 [N] in [0, C), optional weights [N] -> scalar; default
    avg_factor is N."""
    if weights is None:
        loss = F.cross_entropy(_acc(logits), labels, reduction="sum")
    else:
        loss = (F.cross_entropy(_acc(logits), labels, reduction="none") * weights).sum()
    return _normalise(loss, labels.numel() if avg_factor is None else avg_factor)


def l1_loss(
    pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, avg_factor: float | torch.Tensor
) -> torch.Tensor:
    """Sum of |pred - target| * weights over all elements, / avg_factor. pred, target, weights: [N, 4]."""
    return _normalise(((_acc(pred) - target).abs() * weights).sum(), avg_factor)


def smooth_l1_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    avg_factor: float | torch.Tensor,
    beta: float = 1.0,
) -> torch.Tensor:
    """Smooth L1: 0.5 d^2 / beta for |d| < beta, else |d| - 0.5 beta; weighted sum / avg_factor."""
    diff = (_acc(pred) - target).abs()
    loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta) if beta > 0 else diff
    return _normalise((loss * weights).sum(), avg_factor)


def box_regression_loss(
    kind: str,
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    avg_factor: float | torch.Tensor,
    beta: float = 1.0,
) -> torch.Tensor:
    """Dispatch to `l1_loss` ("l1") or `smooth_l1_loss` ("smooth_l1")."""
    if kind == "l1":
        return l1_loss(pred, target, weights, avg_factor)
    if kind == "smooth_l1":
        return smooth_l1_loss(pred, target, weights, avg_factor, beta)
    raise ValueError(f"box loss: expected 'l1' or 'smooth_l1', got {kind!r}")


def mask_bce_loss(
    mask_logits: torch.Tensor, mask_targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-pixel BCE averaged over all pixels of the weighted RoIs: [P, M, M] logits and 0/1 targets, optional 0/1
    weights [P] (default: all 1) -> scalar. With no weighted RoI the result is a zero that still depends on the
    logits (so every parameter gets a gradient)."""
    if mask_logits.numel() == 0:
        return mask_logits.sum() * 0.0
    logits = _acc(mask_logits)
    loss = F.binary_cross_entropy_with_logits(logits, mask_targets.to(logits.dtype), reduction="none")
    if weights is None:
        return loss.mean()
    weights = weights.to(loss.dtype)
    pixels = weights.sum() * (loss.shape[-1] * loss.shape[-2])
    return (loss * weights[:, None, None]).sum() / pixels.clamp(min=1)
