"""Fused split-attention operators (ResNeSt), with autograd and fake-tensor support.

Layouts (R = radix, K = cardinality, C = channels per split):

- ``x``: ``[B, R*C, H, W]``, radix-major (channel ``r*C + k*(C/K) + c``), NCHW or channels_last.
- ``logits``: ``[B, R*C]`` or ``[B, R*C, 1, 1]``, fc2's cardinal-major order (``k*(R*C/K) + r*(C/K) + c``).

The kernels accumulate in fp32 (fp64 for float64 inputs) and return results in the input dtype. Arguments are
checked by the ops themselves (csrc/split_attention/split_attention.h), whose Meta kernels serve fake tensors, so
the wrappers, raw ``torch.ops.resnest_cuda.*`` calls and ``torch.compile`` raise the same errors.
"""

import torch

from . import batch_norm as _batch_norm
from ._library import has_kernel, refuse_functorch_transforms
from .reference import batch_norm as reference_batch_norm
from .reference.split_attention import radix_softmax
from .reference.split_attention import split_attention_pool as reference_split_attention_pool

__all__ = [
    "split_attention_pool",
    "split_attention_combine",
    "split_attention",
    "norm_split_attention",
    "norm_split_attention_applies",
    "cuda_kernels_available",
]


def cuda_kernels_available() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return has_kernel("split_attention_pool", "CUDA")


def _require_tensor(t, name: str, op: str) -> None:
    # Python object types only: every tensor argument (shape, dtype, device, radix, cardinality) is checked by
    # the op itself (csrc/split_attention/split_attention.h), on every device and under torch.compile.
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def split_attention_pool(x: torch.Tensor, radix: int) -> torch.Tensor:
    """Pooled radix sum: ``gap[b, c] = mean_{h,w} sum_r x[b, r*C + c, h, w]``.

    Args:
        x: ``[B, R*C, H, W]`` floating tensor, radix-major channels, NCHW or channels_last.
        radix: R >= 1.
    Returns:
        ``[B, C]`` tensor of x's dtype (accumulated in fp32).
    """
    _require_tensor(x, "x", "split_attention_pool")
    refuse_functorch_transforms("split_attention_pool")
    return torch.ops.resnest_cuda.split_attention_pool(x, radix)


def split_attention_combine(x: torch.Tensor, logits: torch.Tensor, radix: int, cardinality: int = 1) -> torch.Tensor:
    """Radix softmax of ``logits`` applied to the splits of ``x`` and summed: ``out = sum_r att_r * x_r``.

    Args:
        x: ``[B, R*C, H, W]`` floating tensor, radix-major channels, NCHW or channels_last.
        logits: ``[B, R*C]`` or ``[B, R*C, 1, 1]`` in fc2's cardinal-major order, same dtype and device as x.
        radix: R >= 1 (softmax over the R splits; sigmoid when R == 1).
        cardinality: K >= 1, must divide C.
    Returns:
        ``[B, C, H, W]`` tensor in x's dtype and memory format.
    """
    _require_tensor(x, "x", "split_attention_combine")
    _require_tensor(logits, "logits", "split_attention_combine")
    refuse_functorch_transforms("split_attention_combine")
    return torch.ops.resnest_cuda.split_attention_combine(x, logits, radix, cardinality)


# --------------------------------------------------------------------------------------------------------------
# Autograd: each backward is itself a registered op, so torch.compile traces it like any other. When the backward
# itself is differentiated (torch.autograd.grad(..., create_graph=True): gradient penalties, Hessian-vector
# products) it is computed from differentiable PyTorch ops instead, so higher derivatives are exact. The fused
# backward ops called directly are not differentiable: differentiating one raises (_no_double_backward).


def _radix_major_to_logits(t: torch.Tensor, logits: torch.Tensor, radix: int, cardinality: int) -> torch.Tensor:
    """``[B, R, C]`` radix-major -> the layout of ``logits`` (cardinal-major ``k*(R*C/K) + r*(C/K) + c``)."""
    b, c = t.shape[0], t.shape[2]
    return t.reshape(b, radix, cardinality, c // cardinality).transpose(1, 2).reshape(logits.shape)


def _in_layout_of(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The gradient of a channels_last x is channels_last (a differentiable copy only when it is not)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous(memory_format=torch.channels_last):
        return grad.contiguous(memory_format=torch.channels_last)
    return grad


def combine_backward_differentiable(grad_out, x, logits, radix: int, cardinality: int):
    """The combine backward in plain PyTorch ops (differentiable to any order): ``(grad_x, grad_logits)``.

    ``grad_x[b, r*C + j] = att[b, r, j] * grad_out[b, j]``; ``grad_logits`` is ``ds[b, r, j] = sum_hw grad_out * x_r``
    through the softmax (sigmoid when R == 1) Jacobian, in fc2's cardinal-major order.
    """
    b, rc, h, w = x.shape
    c = rc // radix
    att = radix_softmax(logits, radix, cardinality)  # [B, R, C]
    go = grad_out.unsqueeze(1)  # [B, 1, C, H, W]
    grad_x = _in_layout_of((att.reshape(b, radix, c, 1, 1) * go).reshape(b, rc, h, w), x)
    ds = (go * x.reshape(b, radix, c, h, w)).sum(dim=(3, 4))  # [B, R, C]
    if radix == 1:
        da = ds * att * (1 - att)
    else:
        da = att * (ds - (att * ds).sum(dim=1, keepdim=True))
    return grad_x, _radix_major_to_logits(da, logits, radix, cardinality)


def _pool_setup_context(ctx, inputs, output):
    x, radix = inputs
    ctx.radix = radix
    ctx.height, ctx.width = x.shape[2], x.shape[3]


def _pool_backward(ctx, grad_gap):
    # A broadcast view (stride 0 over H, W): autograd adds it in place to combine's gradient of x.
    grad_x = torch.ops.resnest_cuda.split_attention_pool_backward(grad_gap, ctx.radix, ctx.height, ctx.width)
    return grad_x, None


def _pool_backward_setup_context(ctx, inputs, output):
    ctx.radix = inputs[1]


def _pool_backward_backward(ctx, grad_grad_x):
    # pool_backward is linear in grad_gap and its adjoint is the pool itself (mean over H, W of the radix sum).
    return torch.ops.resnest_cuda.split_attention_pool(grad_grad_x, ctx.radix), None, None, None


def _combine_setup_context(ctx, inputs, output):
    x, logits, radix, cardinality = inputs
    ctx.radix = radix
    ctx.cardinality = cardinality
    ctx.save_for_backward(x, logits)


def _combine_backward(ctx, grad_out):
    x, logits = ctx.saved_tensors
    if torch.is_grad_enabled() and any(t.requires_grad for t in (grad_out, x, logits)):
        grad_x, grad_logits = combine_backward_differentiable(grad_out, x, logits, ctx.radix, ctx.cardinality)
    else:
        grad_x, grad_logits = torch.ops.resnest_cuda.split_attention_combine_backward(
            grad_out, x, logits, ctx.radix, ctx.cardinality
        )
    return grad_x, grad_logits, None, None


def _no_double_backward(op: str):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"resnest_cuda::{op} is a backward kernel and is not differentiable (double backward is not supported "
            "through it). Differentiate the forward op instead: torch.autograd.grad(..., create_graph=True) through "
            "split_attention_pool / split_attention_combine / split_attention computes exact higher derivatives."
        )

    return backward


def _not_differentiable(op: str):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"resnest_cuda::{op} is a step of the split-attention tail after BatchNorm + ReLU and is not "
            "differentiable on its own. Differentiate resnest_cuda.ops.norm_split_attention (or batch_norm_act "
            "followed by split_attention) instead."
        )

    return backward


def _no_context(ctx, inputs, output) -> None:
    pass


def _register_autograd() -> None:
    lib = "resnest_cuda::"
    torch.library.register_autograd(lib + "split_attention_pool", _pool_backward, setup_context=_pool_setup_context)
    torch.library.register_autograd(
        lib + "split_attention_pool_backward", _pool_backward_backward, setup_context=_pool_backward_setup_context
    )
    torch.library.register_autograd(
        lib + "split_attention_combine", _combine_backward, setup_context=_combine_setup_context
    )
    for op in ("split_attention_combine_backward", "split_attention_logits_backward", "split_attention_input_backward"):
        torch.library.register_autograd(lib + op, _no_double_backward(op), setup_context=_no_context)
    for op in (
        "split_attention_norm_pool",
        "split_attention_norm_combine",
        "split_attention_norm_backward_reduce",
        "split_attention_norm_backward_sums",
        "split_attention_norm_backward_input",
    ):
        torch.library.register_autograd(lib + op, _not_differentiable(op), setup_context=_no_context)


_register_autograd()


# --------------------------------------------------------------------------------------------------------------
# The whole split-attention tail as one autograd node (eager training).


def _like_strides(t: torch.Tensor, strides: tuple[int, ...]) -> torch.Tensor:
    """t with the given (dense) strides: a copy only when its own differ."""
    if t.stride() == strides:
        return t
    return torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device).copy_(t)


class _AttentionPool(torch.autograd.Function):
    """split_attention_pool for the attention branch of _SplitAttention, differentiable, with grads not materialised.

    _SplitAttention computes the gradient of the attention branch itself and returns None for it, so in a plain
    backward this node receives no gradient and does nothing (the registered op would receive zeros and add a
    zero broadcast to grad_x). It only carries gradients when the backward is itself differentiated.
    """

    @staticmethod
    def forward(ctx, x, radix):
        ctx.set_materialize_grads(False)
        ctx.radix, ctx.height, ctx.width = radix, x.shape[2], x.shape[3]
        return torch.ops.resnest_cuda.split_attention_pool(x, radix)

    @staticmethod
    def backward(ctx, grad_gap):
        if grad_gap is None:
            return None, None
        return torch.ops.resnest_cuda.split_attention_pool_backward(grad_gap, ctx.radix, ctx.height, ctx.width), None


def _attention_backward(ctx, logits, gap, grad_logits, create_graph):
    """Differentiates the attention graph (gap -> logits, built outside the tail's node) inside the node's backward:
    (grad_gap, one gradient or None per param of ctx.params). The graph is kept (retain_graph) for the outer
    backward, which frees it; with create_graph the result stays connected for higher derivatives."""
    wanted = [i for i, needed in enumerate(ctx.params_need_grad) if needed]
    with_gap = gap.requires_grad  # False when x needs no gradient
    inputs = ([gap] if with_gap else []) + [ctx.params[i] for i in wanted]
    grads = torch.autograd.grad(
        logits, inputs, grad_logits, allow_unused=True, retain_graph=True, create_graph=create_graph
    )
    grad_gap = grads[0] if with_gap and grads[0] is not None else torch.zeros_like(gap)
    param_grads = [None] * len(ctx.params)
    for i, g in zip(wanted, grads[1:] if with_gap else grads):
        param_grads[i] = g
    return grad_gap, param_grads


class _SplitAttention(torch.autograd.Function):
    """combine(x, logits) where logits = attention(pool(x)), with a backward that writes grad_x once.

    With the two ops as separate autograd nodes, grad_x receives two contributions (softmax_r * grad_out from
    combine, grad_gap / HW from pool) that autograd must add. This node instead differentiates the small attention
    graph (gap -> logits, built outside it) inside its own backward, so grad_gap is known before grad_x is written:
    backward = one reduction over H, W (the logits gradient) + autograd through the [B, C] attention MLP + one
    elementwise kernel writing grad_x = softmax_r(logits) * grad_out + grad_gap / HW. It returns no gradient for
    logits and gap (already accounted for); their edges only make the engine run this node before the attention
    graph, so that graph is still intact when this backward differentiates it.

    - ``backward(retain_graph=True)`` followed by another backward works (the attention graph is differentiated
      with retain_graph=True; the outer backward frees it as usual).
    - Under ``create_graph=True`` the backward runs on differentiable PyTorch ops and the attention graph is
      connected to x (through _AttentionPool), so second derivatives are exact.
    - grad_x has the memory format of the combine output, i.e. of x, whatever the layout of grad_out.
    - The tensors it keeps (x, logits, gap) go through ``save_for_backward``: saved-tensor hooks apply to them.
    """

    @staticmethod
    def forward(ctx, x, logits, gap, radix, cardinality, *params):
        out = torch.ops.resnest_cuda.split_attention_combine(x, logits, radix, cardinality)
        ctx.save_for_backward(x, logits, gap)
        ctx.radix, ctx.cardinality = radix, cardinality
        ctx.params_need_grad = [p.requires_grad for p in params]
        ctx.params = params
        ctx.out_strides = out.stride()
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, logits, gap = ctx.saved_tensors
        radix, cardinality = ctx.radix, ctx.cardinality
        create_graph = torch.is_grad_enabled()
        grad_out = _like_strides(grad_out, ctx.out_strides)
        if create_graph:
            grad_x_direct, grad_logits = combine_backward_differentiable(grad_out, x, logits, radix, cardinality)
        else:
            grad_logits = torch.ops.resnest_cuda.split_attention_logits_backward(
                grad_out, x, logits.detach(), radix, cardinality
            )
        grad_gap, param_grads = _attention_backward(ctx, logits, gap, grad_logits, create_graph)
        if create_graph:
            b, rc, h, w = x.shape
            grad_x = _in_layout_of(grad_x_direct + (grad_gap / (h * w)).repeat(1, radix).reshape(b, rc, 1, 1), x)
        else:
            grad_x = torch.ops.resnest_cuda.split_attention_input_backward(
                grad_out, logits.detach(), grad_gap, radix, cardinality
            )
        return (grad_x, None, None, None, None, *param_grads)


def split_attention(x: torch.Tensor, radix: int, cardinality: int, attention, params=()) -> torch.Tensor:
    """The full split-attention tail: ``combine(x, attention(pool(x)))``, differentiable in x and `params`.

    Args:
        x: ``[B, R*C, H, W]`` (see :func:`split_attention_pool`).
        attention: callable ``gap [B, C] -> logits [B, R*C]`` (or ``[B, R*C, 1, 1]``), cardinal-major; typically
            fc1 -> norm -> ReLU -> fc2. It runs once, in forward (norm running statistics update once).
        params: the tensors `attention` uses that need gradients (e.g. ``list(module.parameters())``).

    In eager mode with gradients enabled the combine and the backward of the whole tail run as one autograd node
    whose backward writes grad_x once (see ``_SplitAttention``); under ``torch.compile`` or without gradients it
    is the two registered ops, which the compiler traces like any other op. Higher derivatives are exact on every
    path; torch.func transforms raise a clear error (see ``_library.refuse_functorch_transforms``).
    """
    _require_tensor(x, "x", "split_attention")
    refuse_functorch_transforms("split_attention")
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
    if needs_grad and not torch.compiler.is_compiling():
        gap = _AttentionPool.apply(x, radix)
        logits = attention(gap)
        _require_tensor(logits, "logits", "split_attention")
        return _SplitAttention.apply(x, logits, gap, radix, cardinality, *params)
    logits = attention(split_attention_pool(x, radix))
    return split_attention_combine(x, logits, radix, cardinality)


# --------------------------------------------------------------------------------------------------------------
# The split-attention tail after its BatchNorm + ReLU (eager training): u = relu(bn0(x)) is never written.


def _norm_relu_spec(x, weight, bias, eps):
    """u = relu(bn(x)) with the batch statistics of x, as a differentiable graph of plain PyTorch ops."""
    return reference_batch_norm.batch_norm_act(x, weight, bias, None, None, eps, relu=True)[0]


def _refuse_synced_create_graph(group) -> None:
    if group is not None:
        raise RuntimeError(
            "split attention after a SyncBatchNorm synchronised over several processes: higher derivatives "
            "(create_graph=True) are not supported; use BatchNorm, or compute them in one process"
        )


class _NormAttentionPool(torch.autograd.Function):
    """split_attention_norm_pool (the pool of u = relu(bn(x))) for the attention branch of _NormSplitAttention,
    which accounts for the branch's gradient itself: in a plain backward this node receives none and does nothing.
    When the backward is differentiated (create_graph) it receives one, and differentiates the specification."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps, radix, group):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, bias)
        ctx.eps, ctx.radix, ctx.group = eps, radix, group
        return torch.ops.resnest_cuda.split_attention_norm_pool(x, mean, var, weight, bias, eps, radix)

    @staticmethod
    def backward(ctx, grad_gap):
        if grad_gap is None:
            return (None,) * 8
        _refuse_synced_create_graph(ctx.group)
        x, weight, bias = ctx.saved_tensors
        wanted = [i for i, t in enumerate((x, weight, bias)) if t is not None and ctx.needs_input_grad[i]]
        out = [None] * 8
        with torch.enable_grad():
            gap = reference_split_attention_pool(_norm_relu_spec(x, weight, bias, ctx.eps), ctx.radix)
        grads = torch.autograd.grad(
            gap, [(x, weight, bias)[i] for i in wanted], grad_gap, create_graph=torch.is_grad_enabled(),
            allow_unused=True,
        )
        for i, g in zip(wanted, grads):
            out[i] = g
        return tuple(out)


class _NormSplitAttention(torch.autograd.Function):
    """combine(u, logits) with u = relu(bn(x)) (statistics mean, var, count of x, computed outside) and
    logits = attention(pool(u)), as _SplitAttention but reading x instead of u: u is neither written nor saved.

    Forward: split_attention_norm_combine (one pass over x). Backward: split_attention_norm_backward_reduce (one
    reduction over x and grad_out: the logits gradient and per-(b, channel) sums), autograd through the small
    attention graph, split_attention_norm_backward_sums (the BatchNorm's per-channel sums, tiny) and
    split_attention_norm_backward_input (grad_x in one elementwise pass; grad_u and the ReLU mask recomputed, never
    written): two passes over x where batch_norm_act followed by split_attention makes four and writes grad_u. The
    forward is bit for bit theirs; the backward sums in another order (per image first). It saves x, the
    per-channel statistics, logits and gap; retain_graph works as in _SplitAttention; under create_graph the
    backward differentiates the plain-PyTorch specification (u recomputed from x), so higher derivatives are exact
    (refused with a synchronised SyncBatchNorm, as batch_norm_act refuses them)."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, count, logits, gap, eps, group, radix, cardinality, *params):
        out = torch.ops.resnest_cuda.split_attention_norm_combine(
            x, mean, var, weight, bias, eps, logits, radix, cardinality
        )
        ctx.save_for_backward(x, weight, bias, mean, var, count, logits, gap)
        ctx.eps, ctx.group, ctx.radix, ctx.cardinality = eps, group, radix, cardinality
        ctx.params_need_grad = [p.requires_grad for p in params]
        ctx.params = params
        ctx.out_strides = out.stride()
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, var, count, logits, gap = ctx.saved_tensors
        radix, cardinality, eps = ctx.radix, ctx.cardinality, ctx.eps
        create_graph = torch.is_grad_enabled()
        grad_out = _like_strides(grad_out, ctx.out_strides)
        u = None
        if create_graph:
            _refuse_synced_create_graph(ctx.group)
            u = _norm_relu_spec(x, weight, bias, eps)
            grad_u_direct, grad_logits = combine_backward_differentiable(grad_out, u, logits, radix, cardinality)
        else:
            grad_logits, sums = torch.ops.resnest_cuda.split_attention_norm_backward_reduce(
                grad_out, x, mean, var, weight, bias, eps, logits.detach(), radix, cardinality
            )
        grad_gap, param_grads = _attention_backward(ctx, logits, gap, grad_logits, create_graph)
        needs = ctx.needs_input_grad[:3]
        if create_graph:
            b, rc, h, w = u.shape
            grad_u = _in_layout_of(grad_u_direct + (grad_gap / (h * w)).repeat(1, radix).reshape(b, rc, 1, 1), u)
            wanted_bn = [i for i, t in enumerate((x, weight, bias)) if t is not None and needs[i]]
            bn_grads = [None] * 3
            if wanted_bn:
                got = torch.autograd.grad(
                    u, [(x, weight, bias)[i] for i in wanted_bn], grad_u, create_graph=True, allow_unused=True
                )
                for i, g in zip(wanted_bn, got):
                    bn_grads[i] = g
            grad_x, grad_w, grad_b = bn_grads
        else:
            grad_x, grad_w, grad_b = _norm_input_grads(
                grad_out, x, weight, bias, mean, var, count, logits.detach(), grad_gap, sums, eps, ctx.group,
                radix, cardinality, needs,
            )
        return (grad_x, grad_w, grad_b, None, None, None, None, None, None, None, None, None, *param_grads)


def _norm_input_grads(grad_out, x, weight, bias, mean, var, count, logits, grad_gap, sums, eps, group, radix,
                      cardinality, needs):
    """(grad_x, grad_weight, grad_bias) of the BatchNorm + ReLU before the split attention, from the per-(b, channel)
    sums of split_attention_norm_backward_reduce and grad_gap: the BatchNorm's per-channel sums, all-reduced over a
    SyncBatchNorm's group for grad_x (the weight and bias gradients stay local, as in batch_norm_act), then one
    elementwise pass."""
    need_x = needs[0]
    ops = torch.ops.resnest_cuda
    hw = x.shape[2] * x.shape[3]
    sum_dy, sum_dy_xhat = ops.split_attention_norm_backward_sums(
        sums, logits, grad_gap, var, eps, radix, cardinality, hw
    )
    grad_w, grad_b, sum_dy, sum_dy_xhat = _batch_norm.affine_grads_and_synced_sums(
        sum_dy, sum_dy_xhat, weight, bias, needs, group
    )
    grad_x = None
    if need_x:
        grad_x = ops.split_attention_norm_backward_input(
            grad_out, x, mean, var, weight, bias, eps, logits, grad_gap, sum_dy, sum_dy_xhat, count, radix,
            cardinality,
        )
    return grad_x, grad_w, grad_b


def norm_split_attention_applies(bn, x: torch.Tensor, params=()) -> bool:
    """True when :func:`norm_split_attention` runs: ``bn`` normalises with batch statistics (``fused_applies``), a
    gradient is needed, and eager mode (torch.compile traces batch_norm_act and split_attention instead)."""
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in params) or any(p.requires_grad for p in bn.parameters())
    )
    # Through the module attribute: benchmarks that patch batch_norm.fused_applies (modules only) reach it too.
    return needs_grad and x.dim() == 4 and _batch_norm.fused_applies(bn, x) and not torch.compiler.is_compiling()


def norm_split_attention(bn, x: torch.Tensor, radix: int, cardinality: int, attention, params=()) -> torch.Tensor:
    """``split_attention(relu(bn(x)), radix, cardinality, attention, params)`` for a batch-statistics BatchNorm
    (``norm_split_attention_applies``) without writing or saving ``u = relu(bn(x))``: the pool, the combine and the
    logits gradient read x and apply the BatchNorm + ReLU on the fly (see _NormSplitAttention). Running statistics
    update once; a SyncBatchNorm synchronises its statistics and backward sums as in batch_norm_act."""
    _require_tensor(x, "x", "norm_split_attention")
    refuse_functorch_transforms("norm_split_attention")
    mean, var, count, group = _batch_norm.batch_statistics(bn, x)
    weight = bn.weight if bn.affine else None
    bias = bn.bias if bn.affine else None
    gap = _NormAttentionPool.apply(x, weight, bias, mean, var, bn.eps, radix, group)
    logits = attention(gap)
    _require_tensor(logits, "logits", "norm_split_attention")
    return _NormSplitAttention.apply(
        x, weight, bias, mean, var, count, logits, gap, bn.eps, group, radix, cardinality, *params
    )
