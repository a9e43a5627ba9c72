"""Fused training-mode BatchNorm (+ residual add) (+ ReLU), optionally over a row mask and synchronised across a
process group: ``batch_norm_act(bn, x, residual=None, relu=True, rows=None)``.

For a BatchNorm normalising with batch statistics (``nn.BatchNorm*d`` or ``SyncBatchNorm`` in training mode) the
step is two passes over x forward and two backward, whatever the number of ops it replaces:

- forward: ``batch_norm_stats`` (one reduction; it also updates the running statistics on the device) and
  ``batch_norm_act`` (one elementwise pass writing ``y``);
- backward: ``batch_norm_act_backward_reduce`` (one reduction: sum of g and of g * xhat, g = grad_y masked by the
  ReLU) and ``batch_norm_act_backward_input`` (one elementwise pass writing grad_x). Without a residual the ReLU mask
  is recomputed from x and the statistics, so the backward reads neither y nor a stored mask: two tensors read by
  the reduction (grad_y, x), two read and one written by the elementwise pass. With a residual under ReLU the
  reduction reads y for the mask and writes g, which is the residual's gradient and what the elementwise pass reads.

It saves x, per-channel statistics and, with a residual under ReLU, y (the output, which the next convolution
saves anyway: one storage): no fp32 copy of a 16-bit tensor. ``rows`` (bool [N]) restricts the statistics to the
rows where it is True (the padding slots of fixed-size RoI batches must not move them); every row is normalised.
A ``SyncBatchNorm`` whose process group has several members gathers the per-process statistics (mean, variance,
count) and combines them before normalising, and sums the backward reductions for the input gradient, as
``torch.nn.SyncBatchNorm`` does (the weight and bias gradients stay local: DDP averages them).

With fixed statistics (an eval-mode BatchNorm, a FrozenBatchNorm2d: frozen stages, inference) and nothing needing a
gradient it is the one elementwise pass of ``batch_norm_act``. Anything else (eval mode with gradients, GroupNorm, a
folded ``nn.Identity``) runs the module as is, then the residual add and ReLU. Under torch.func transforms the
plain-PyTorch specification (resnest_cuda.reference.batch_norm) runs instead. Higher derivatives
(``create_graph=True``) are exact: the backward then differentiates the specification; with a synchronised
SyncBatchNorm they are refused with a clear error.
"""

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import _library  # noqa: F401  (loads the ops)
from .norm import FrozenBatchNorm2d, process_group_of, syncs_statistics, uses_batch_statistics
from .reference import batch_norm as reference

__all__ = ["batch_norm_act", "batch_statistics", "fused_applies", "frozen_applies", "memory_format_of"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _sync_group(bn: nn.Module):
    """The process group a training-mode SyncBatchNorm reduces over, or None (one process: plain BatchNorm)."""
    return process_group_of(bn) if bn.training and syncs_statistics(bn) else None


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _inputs_ok(weight: torch.Tensor | None, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
    """What both fused paths accept: a floating x of at least 2 dimensions; parameters of the statistics dtype (fp32,
    fp64 for fp64 x) or of x's own (anything else runs, and fails, as torch's modules do); a residual like x; no
    torch.func transform."""
    return (
        x.dim() >= 2
        and x.dtype in _DTYPES
        and (weight is None or weight.dtype in (_stats_dtype(x), x.dtype))
        and (residual is None or (residual.shape == x.shape and residual.dtype == x.dtype))
        and not torch._C._are_functorch_transforms_active()
    )


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """channels_last for a channels_last-contiguous 4-D tensor that is not also NCHW-contiguous, else NCHW: the
    layout rule of the kernels (bn_format in csrc/batch_norm/batch_norm_act.h, activation_format for split
    attention)."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def fused_applies(bn: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None) -> bool:
    """True when :func:`batch_norm_act` runs the fused ops for this norm and input."""
    return uses_batch_statistics(bn) and _inputs_ok(bn.weight if bn.affine else None, x, residual)


def frozen_applies(bn: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None) -> bool:
    """True when :func:`batch_norm_act` runs the one-pass op with fixed statistics: an eval-mode BatchNorm (running
    statistics) or a FrozenBatchNorm2d, when nothing needs a gradient (frozen stages, inference)."""
    if isinstance(bn, FrozenBatchNorm2d):
        weight = bn.weight
    elif isinstance(bn, _BatchNorm) and not bn.training and bn.running_mean is not None:
        weight = bn.weight if bn.affine else None
    else:
        return False
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad
        or (residual is not None and residual.requires_grad)
        or (weight is not None and weight.requires_grad)
        or (isinstance(bn, _BatchNorm) and bn.affine and bn.bias.requires_grad)
    )
    return not needs_grad and _inputs_ok(weight, x, residual)


def _frozen(bn: nn.Module, x: torch.Tensor, residual: torch.Tensor | None, relu: bool) -> torch.Tensor:
    stats = _stats_dtype(x)
    affine = isinstance(bn, FrozenBatchNorm2d) or bn.affine
    return torch.ops.resnest_cuda.batch_norm_act(
        x,
        bn.running_mean.to(stats),
        bn.running_var.to(stats),
        bn.weight if affine else None,
        bn.bias if affine else None,
        residual,
        bn.eps,
        relu,
    )


def _check_batch(x: torch.Tensor, rows: torch.Tensor | None) -> None:
    # BatchNorm's own rule: one value per channel has no variance (a masked batch is judged on the device instead).
    if rows is None and x.dim() >= 2 and x.numel() == x.shape[1] and x.shape[1] > 0:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")


class _BatchNormAct(torch.autograd.Function):
    """y = act(xhat * weight + bias (+ residual)) from statistics computed outside (constants here): the backward
    accounts for the statistics' dependence on x itself, so the input gradient is exact."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, mean, var, count, rows, eps, relu, group, aliases):
        # An undefined output gradient stays undefined (no zeros, no work): the split-attention tail differentiates
        # its attention branch itself, and the outer backward then reaches this node without a gradient.
        ctx.set_materialize_grads(False)
        y = torch.ops.resnest_cuda.batch_norm_act(x, mean, var, weight, bias, residual, eps, relu)
        # The residual is not kept (its gradient is g). y is kept only where the ReLU mask cannot be recomputed
        # from x and the statistics: with a residual.
        ctx.save_for_backward(x, y if relu and residual is not None else None, weight, bias, mean, var, count, rows)
        ctx.eps, ctx.relu, ctx.group = eps, relu, group
        if aliases == 1:
            return y
        # Views of y, one per consumer: autograd hands their gradients to backward apart (see batch_norm_act).
        return (y, *(y.view_as(y) for _ in range(aliases - 1)))

    @staticmethod
    def backward(ctx, *grads):
        parts = [g for g in grads if g is not None]
        if not parts:
            return (None,) * 12
        x, y, weight, bias, mean, var, count, rows = ctx.saved_tensors
        if torch.is_grad_enabled():
            return (*_differentiable_backward(ctx, sum(parts), x, y, weight, bias, mean, var, rows), None)
        grad_x, grad_w, grad_b, g = _fused_backward(
            parts[0], x, y, weight, bias, mean, var, count, rows, ctx.eps, ctx.relu, ctx.group,
            ctx.needs_input_grad[:3], parts[1:],
        )
        grad_r = g if ctx.needs_input_grad[3] else None
        return grad_x, grad_w, grad_b, grad_r, None, None, None, None, None, None, None, None


def _fused_backward(grad_y, x, y, weight, bias, mean, var, count, rows, eps, relu, group, needs, more_grads=()):
    """The backward of act(bn(x) (+ residual)) with batch statistics (mean, var, count) as the fused ops compute it:
    one reduction, then one elementwise pass for grad_x. y: the forward output where the ReLU mask must be read from
    it (a residual), else None (the mask is recomputed from x). needs: whether (x, weight, bias) want gradients.
    more_grads (with y): further parts of the output gradient, summed with grad_y inside the reduction.
    Returns (grad_x, grad_weight, grad_bias, g), g the residual's gradient: grad_y through the ReLU when y is given,
    grad_y without ReLU (an empty tensor otherwise)."""
    need_x = needs[0]
    grad_y = grad_y.contiguous(memory_format=memory_format_of(x))  # converted once for both ops
    sum_dy, sum_dy_xhat, g = torch.ops.resnest_cuda.batch_norm_act_backward_reduce(
        grad_y, x, y, mean, var, weight, bias, eps, relu, *more_grads
    )
    # y given: g is grad_y through the ReLU; input_relu: the elementwise pass masks grad_y itself.
    input_relu = relu and y is None
    if not relu:
        g = grad_y
    grad_w, grad_b, sum_dy, sum_dy_xhat = affine_grads_and_synced_sums(sum_dy, sum_dy_xhat, weight, bias, needs, group)
    grad_x = None
    if need_x:
        grad_x = torch.ops.resnest_cuda.batch_norm_act_backward_input(
            grad_y if input_relu else g, x, mean, var, weight, bias, sum_dy, sum_dy_xhat, count, rows, eps,
            input_relu,
        )
    return grad_x, grad_w, grad_b, g


def affine_grads_and_synced_sums(sum_dy, sum_dy_xhat, weight, bias, needs, group):
    """From a batch-statistics BatchNorm's backward sums (per channel: of g and of g * xhat): the weight and bias
    gradients (local: DDP averages them) where needs (x, weight, bias) asks for them, and the sums the input
    gradient uses, summed over a SyncBatchNorm's process group when x needs a gradient and group is not None."""
    need_x, need_w, need_b = needs
    grad_w = sum_dy_xhat.to(weight.dtype) if need_w else None
    grad_b = sum_dy.to(bias.dtype) if need_b else None
    if need_x and group is not None:
        both = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(both, group=group)
        sum_dy, sum_dy_xhat = both.chunk(2)
    return grad_w, grad_b, sum_dy, sum_dy_xhat


def _differentiable_backward(ctx, grad_y, x, y, weight, bias, mean, var, rows):
    """The backward as a graph (create_graph=True), built from the saved inputs so that it stays connected to them:
    g = grad_y where the ReLU passed (y <= 0 is false, y recomputed by the forward op when it was not kept; the mask
    is constant almost everywhere), the gradient of the plain-PyTorch specification of the normalisation for x,
    weight and bias, and g itself for the residual."""
    if ctx.group is not None:
        raise RuntimeError(
            "batch_norm_act: higher derivatives (create_graph=True) through a SyncBatchNorm synchronised over "
            "several processes are not supported; use BatchNorm, or compute them in one process"
        )
    g = grad_y
    if ctx.relu:
        if y is None:
            with torch.no_grad():
                y = torch.ops.resnest_cuda.batch_norm_act(x, mean, var, weight, bias, None, ctx.eps, True)
        g = torch.where(y <= 0, torch.zeros_like(grad_y), grad_y)
    candidates = (x, weight, bias)
    wanted = [i for i, t in enumerate(candidates) if t is not None and ctx.needs_input_grad[i]]
    out = [None] * 4
    if wanted:
        y_lin = reference.batch_norm_act(x, weight, bias, None, rows, ctx.eps, relu=False)[0]
        grads = torch.autograd.grad(y_lin, [candidates[i] for i in wanted], g, create_graph=True, allow_unused=True)
        for i, grad in zip(wanted, grads):
            out[i] = grad
    if ctx.needs_input_grad[3]:
        out[3] = g
    return (*out, None, None, None, None, None, None, None)


def _gather_statistics(mean, var, count, group):
    """Combines per-process (mean, biased var, count) over `group`: the statistics of the union of the batches."""
    c = mean.shape[0]
    local = torch.cat([mean, var, count.reshape(1)])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    table = torch.stack(gathered)  # [world, 2C + 1]
    counts = table[:, 2 * c :]
    total = counts.sum()
    weights = counts / total.clamp(min=1)
    g_mean = (table[:, :c] * weights).sum(0)
    g_var = ((table[:, c : 2 * c] + (table[:, :c] - g_mean) ** 2) * weights).sum(0)
    return g_mean, g_var, total


def batch_norm_act(
    bn: nn.Module,
    x: torch.Tensor,
    residual: torch.Tensor | None = None,
    relu: bool = True,
    rows: torch.Tensor | None = None,
    aliases: int = 1,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``act(bn(x) (+ residual))`` with act = ReLU or identity, fused when ``bn`` normalises with batch statistics
    (see the module docstring). ``rows``: optional bool [N], the rows whose statistics a batch-statistics BatchNorm
    uses (every row is normalised with them; other norms ignore it). With no row selected, or one value in all,
    the running statistics stay as they are (BatchNorm would refuse such a batch).

    ``aliases`` > 1 (1 to 3) returns a tuple of that many tensors with y's values, one for each consumer of y (the
    next block's conv and shortcut, a neck): on the fused path with a residual and ReLU in eager mode they are
    views of y, so autograd hands their gradients to the backward apart and the reduction sums them as it reads
    them, instead of an autograd add that reads two full tensors and writes one. Elsewhere they are y itself."""
    if not 1 <= aliases <= 3:
        raise ValueError(f"aliases must be 1, 2 or 3, got {aliases}")
    if aliases > 1:
        if residual is None or not relu or torch.compiler.is_compiling() or not fused_applies(bn, x, residual):
            return (batch_norm_act(bn, x, residual, relu, rows),) * aliases
    if not fused_applies(bn, x, residual):
        if frozen_applies(bn, x, residual):
            return _frozen(bn, x, residual, relu)
        if rows is not None and uses_batch_statistics(bn):
            y = _reference_module(bn, x, residual, relu, rows)
        else:
            y = bn(x)
            if residual is not None:
                y = y + residual
            if relu:
                y = torch.relu(y)
        return y
    mean, var, count, group = batch_statistics(bn, x, rows)
    weight = bn.weight if bn.affine else None
    bias = bn.bias if bn.affine else None
    return _BatchNormAct.apply(x, weight, bias, residual, mean, var, count, rows, bn.eps, relu, group, aliases)


def batch_statistics(bn: nn.Module, x: torch.Tensor, rows: torch.Tensor | None = None):
    """(mean, biased var, count, process group or None) of x for a batch-statistics BatchNorm (``fused_applies``):
    over the selected ``rows``, gathered over a SyncBatchNorm's process group, the running statistics updated once."""
    if rows is not None and (rows.dtype != torch.bool or rows.shape != x.shape[:1]):
        raise ValueError(f"rows must be a bool tensor of shape [{x.shape[0]}], got {rows.dtype} {list(rows.shape)}")
    _check_batch(x, rows)
    group = _sync_group(bn)
    track = bn.training and bn.track_running_stats and bn.running_mean is not None
    if group is None:
        momentum = -1.0 if bn.momentum is None else float(bn.momentum)
        mean, var, count = torch.ops.resnest_cuda.batch_norm_stats(
            x.detach(),
            rows,
            bn.running_mean if track else None,
            bn.running_var if track else None,
            bn.num_batches_tracked if track else None,
            momentum,
        )
    else:
        mean, var, count = torch.ops.resnest_cuda.batch_norm_stats(x.detach(), rows)
        mean, var, count = _gather_statistics(mean, var, count, group)
        if track:
            reference.update_running_stats(
                bn.running_mean, bn.running_var, bn.num_batches_tracked, bn.momentum, mean, var, count
            )
    return mean, var, count, group


def _reference_module(bn, x, residual, relu, rows):
    """The specification with a module's parameters and running statistics (torch.func transforms)."""
    weight = bn.weight if bn.affine else None
    bias = bn.bias if bn.affine else None
    y, mean, var, count = reference.batch_norm_act(x, weight, bias, residual, rows, bn.eps, relu, _sync_group(bn))
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        reference.update_running_stats(
            bn.running_mean, bn.running_var, bn.num_batches_tracked, bn.momentum, mean, var, count
        )
    return y
