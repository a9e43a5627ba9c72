"""Training-mode BatchNorm (+ residual) (+ ReLU) with an optional row mask, in plain PyTorch ops: the specification
of the fused ops (resnest_cuda.batch_norm), and what they fall back to where the fused ops do not apply (torch.func
transforms) or must be differentiated twice."""

import torch


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    from torch.distributed.nn.functional import all_reduce  # differentiable: the gradient is reduced as well

    return all_reduce(t, group=group)


def batch_norm_statistics(
    x: torch.Tensor, rows: torch.Tensor | None = None, group=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of x [N, C, ...] over the rows where `rows` (bool [N]) is True (every
    row when None), summed over `group` (a process group, or None for this process alone), and the element count.
    fp32 (fp64 for fp64 x), differentiable, no host synchronisation."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(dtype)
    dims = [0] + list(range(2, x.dim()))
    per_row = _spatial(x)
    if rows is None:
        count = torch.full((), float(x.shape[0] * per_row), dtype=dtype, device=x.device)
        total = xf.sum(dims)
    else:
        w = rows.to(dtype).view(-1, *[1] * (x.dim() - 1))
        count = w.sum() * per_row
        total = (xf * w).sum(dims)
    if group is not None:
        count, total = _all_reduce(count, group), _all_reduce(total, group)
    mean = total / count.clamp(min=1)
    centred = xf - mean.view(1, -1, *[1] * (x.dim() - 2))
    squares = centred * centred if rows is None else centred * centred * w
    sq = squares.sum(dims)
    if group is not None:
        sq = _all_reduce(sq, group)
    return mean, sq / count.clamp(min=1), count


def _spatial(x: torch.Tensor) -> int:
    n = 1
    for s in x.shape[2:]:
        n *= s
    return n


def batch_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    eps: float = 1e-5,
    relu: bool = True,
    group=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``y = act((x - mean) / sqrt(var + eps) * weight + bias (+ residual))`` with the statistics of
    :func:`batch_norm_statistics`; every row is normalised. Returns ``(y, mean, var, count)``; y has x's dtype
    (computed in fp32, fp64 for fp64 x) and the statistics are detached."""
    mean, var, count = batch_norm_statistics(x, rows, group)
    dtype = mean.dtype
    shape = (1, -1, *[1] * (x.dim() - 2))
    y = (x.to(dtype) - mean.view(shape)) * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        y = y * weight.to(dtype).view(shape)
    if bias is not None:
        y = y + bias.to(dtype).view(shape)
    if residual is not None:
        y = y + residual.to(dtype)
    if relu:
        y = torch.relu(y)
    return y.to(x.dtype), mean.detach(), var.detach(), count.detach()


@torch.no_grad()
def update_running_stats(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    num_batches_tracked: torch.Tensor | None,
    momentum: float | None,
    mean: torch.Tensor,
    var: torch.Tensor,
    count: torch.Tensor,
) -> None:
    """A training-mode BatchNorm's running-statistics update, on the device (no host synchronisation):
    num_batches_tracked += 1; factor = momentum (None: 1 / num_batches_tracked), 0 when count <= 1 (BatchNorm would
    refuse such a batch); running = running + factor * (batch - running), the variance unbiased
    (count / (count - 1))."""
    if num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    if momentum is None:
        factor = 1.0 / num_batches_tracked.to(count.dtype)
    else:
        factor = torch.full((), momentum, dtype=count.dtype, device=count.device)
    factor = factor * (count > 1).to(count.dtype)
    unbiased = var * (count / (count - 1).clamp(min=1))
    running_mean.copy_(torch.lerp(running_mean.to(mean.dtype), mean, factor))
    running_var.copy_(torch.lerp(running_var.to(var.dtype), unbiased, factor))
