"""Fused split-attention operators (ResNeSt), with autograd and fake-tensor support.

Layouts (R = radix, K = cardinality, C = channels per split):

- ``x``: ``[B, R*C, H, W]``, radix-major (channel ``r*C + k*(C/K) + c``), NCHW or channels_last.
- ``logits``: ``[B, R*C]`` or ``[B, R*C, 1, 1]``, fc2's cardinal-major order (``k*(R*C/K) + r*(C/K) + c``).

The kernels accumulate in fp32 (fp64 for float64 inputs) and return results in the input dtype.
"""

import torch

from ._library import has_kernel

__all__ = ["split_attention_pool", "split_attention_combine", "split_attention", "cuda_kernels_available"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def cuda_kernels_available() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return has_kernel("split_attention_pool", "CUDA")


def _check_x(x: torch.Tensor, radix: int, op: str) -> int:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be a 4-D tensor [B, radix*C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: x must be float32/float16/bfloat16/float64, got {x.dtype}")
    if not isinstance(radix, int) or isinstance(radix, bool) or radix < 1:
        raise ValueError(f"{op}: radix must be an int >= 1, got {radix!r}")
    if x.shape[1] % radix != 0:
        raise ValueError(
            f"{op}: x.shape[1] ({x.shape[1]}) must be divisible by radix ({radix}); "
            f"expected x of shape [B, radix*C, H, W]"
        )
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{op}: x must have H >= 1 and W >= 1, got shape {tuple(x.shape)}")
    return x.shape[1] // radix


def _check_combine(x: torch.Tensor, logits: torch.Tensor, radix: int, cardinality: int) -> int:
    op = "split_attention_combine"
    channels = _check_x(x, radix, op)
    if not isinstance(cardinality, int) or isinstance(cardinality, bool) or cardinality < 1:
        raise ValueError(f"{op}: cardinality must be an int >= 1, got {cardinality!r}")
    if channels % cardinality != 0:
        raise ValueError(
            f"{op}: channels per split ({channels} = x.shape[1] / radix) must be divisible by "
            f"cardinality ({cardinality})"
        )
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{op}: logits must be a torch.Tensor, got {type(logits).__name__}")
    batch, rc = x.shape[0], x.shape[1]
    flat_ok = logits.dim() == 2
    conv_ok = logits.dim() == 4 and logits.shape[2] == 1 and logits.shape[3] == 1
    if not (flat_ok or conv_ok) or logits.shape[0] != batch or logits.shape[1] != rc:
        raise ValueError(
            f"{op}: logits must have shape [{batch}, {rc}] or [{batch}, {rc}, 1, 1] "
            f"(batch, radix*C), got {tuple(logits.shape)}"
        )
    if logits.dtype != x.dtype:
        raise TypeError(f"{op}: logits dtype ({logits.dtype}) must match x dtype ({x.dtype})")
    if logits.device != x.device:
        raise ValueError(f"{op}: logits is on {logits.device} but x is on {x.device}; both must be on one device")
    return channels


def _activation_format(x: torch.Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def split_attention_pool(x: torch.Tensor, radix: int) -> torch.Tensor:
    """Pooled radix sum: ``gap[b, c] = mean_{h,w} sum_r x[b, r*C + c, h, w]``.

    Args:
        x: ``[B, R*C, H, W]`` floating tensor, radix-major channels, NCHW or channels_last.
        radix: R >= 1.
    Returns:
        ``[B, C]`` tensor of x's dtype (accumulated in fp32).
    """
    _check_x(x, radix, "split_attention_pool")
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
    _check_combine(x, logits, radix, cardinality)
    return torch.ops.resnest_cuda.split_attention_combine(x, logits, radix, cardinality)


# --------------------------------------------------------------------------------------------------------------
# Fake (meta) kernels: shapes, dtypes and memory formats of every op, for torch.compile and opcheck.


@torch.library.register_fake("resnest_cuda::split_attention_pool")
def _pool_fake(x, radix):
    return x.new_empty((x.shape[0], x.shape[1] // radix))


@torch.library.register_fake("resnest_cuda::split_attention_pool_backward")
def _pool_backward_fake(grad_gap, radix, height, width):
    batch, rc = grad_gap.shape[0], grad_gap.shape[1] * radix
    return grad_gap.new_empty((batch, rc)).view(batch, rc, 1, 1).expand(batch, rc, height, width)


@torch.library.register_fake("resnest_cuda::split_attention_combine")
def _combine_fake(x, logits, radix, cardinality):
    b, rc, h, w = x.shape
    return x.new_empty((b, rc // radix, h, w)).contiguous(memory_format=_activation_format(x))


@torch.library.register_fake("resnest_cuda::split_attention_combine_backward")
def _combine_backward_fake(grad_out, x, logits, radix, cardinality):
    return torch.empty_like(x, memory_format=_activation_format(x)), torch.empty_like(
        logits, memory_format=torch.contiguous_format
    )


@torch.library.register_fake("resnest_cuda::split_attention_logits_backward")
def _logits_backward_fake(grad_out, x, logits, radix, cardinality):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.register_fake("resnest_cuda::split_attention_input_backward")
def _input_backward_fake(grad_out, logits, grad_gap, radix, cardinality):
    b, c, h, w = grad_out.shape
    return grad_out.new_empty((b, radix * c, h, w)).contiguous(memory_format=_activation_format(grad_out))


# --------------------------------------------------------------------------------------------------------------
# Autograd: each backward is itself a registered op, so torch.compile traces it like any other.


def _pool_setup_context(ctx, inputs, output):
    x, radix = inputs
    ctx.radix = radix
    ctx.height, ctx.width = x.shape[2], x.shape[3]


def _pool_backward(ctx, grad_gap):
    # A broadcast view (stride 0 over H, W): autograd adds it in place to combine's gradient of x.
    grad_x = torch.ops.resnest_cuda.split_attention_pool_backward(grad_gap, ctx.radix, ctx.height, ctx.width)
    return grad_x, None


def _combine_setup_context(ctx, inputs, output):
    x, logits, radix, cardinality = inputs
    ctx.radix = radix
    ctx.cardinality = cardinality
    ctx.save_for_backward(x, logits)


def _combine_backward(ctx, grad_out):
    x, logits = ctx.saved_tensors
    grad_x, grad_logits = torch.ops.resnest_cuda.split_attention_combine_backward(
        grad_out, x, logits, ctx.radix, ctx.cardinality
    )
    return grad_x, grad_logits, None, None


torch.library.register_autograd(
    "resnest_cuda::split_attention_pool", _pool_backward, setup_context=_pool_setup_context
)
torch.library.register_autograd(
    "resnest_cuda::split_attention_combine", _combine_backward, setup_context=_combine_setup_context
)


# --------------------------------------------------------------------------------------------------------------
# The whole split-attention tail as one autograd node (eager training).


class _SplitAttention(torch.autograd.Function):
    """pool -> attention(gap) -> combine with a backward that writes grad_x once.

    With the two ops as separate autograd nodes, grad_x receives two contributions (softmax_r * grad_out from
    combine, grad_gap / HW from pool) that autograd must add. Here the small attention graph (gap -> logits) is
    built inside forward and differentiated inside backward, so grad_gap is known before grad_x is written:
    backward = one reduction over H, W (the logits gradient) + autograd through the [B, C] attention MLP + one
    elementwise kernel writing grad_x = softmax_r(logits) * grad_out + grad_gap / HW.
    """

    @staticmethod
    def forward(ctx, x, radix, cardinality, attention, *params):
        gap = torch.ops.resnest_cuda.split_attention_pool(x, radix)
        with torch.enable_grad():
            gap_in = gap.detach().requires_grad_()
            logits = attention(gap_in)
        _check_combine(x, logits.detach(), radix, cardinality)
        out = torch.ops.resnest_cuda.split_attention_combine(x, logits.detach(), radix, cardinality)
        ctx.save_for_backward(x)
        ctx.graph = (gap_in, logits)
        ctx.radix, ctx.cardinality, ctx.num_params = radix, cardinality, len(params)
        ctx.params = params
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        gap_in, logits = ctx.graph
        radix, cardinality = ctx.radix, ctx.cardinality
        flat_logits = logits.detach()
        grad_logits = torch.ops.resnest_cuda.split_attention_logits_backward(
            grad_out, x, flat_logits, radix, cardinality
        )
        wanted = [i for i, p in enumerate(ctx.params) if p.requires_grad]
        inputs = [gap_in] + [ctx.params[i] for i in wanted]
        grads = torch.autograd.grad(logits, inputs, grad_logits, allow_unused=True)
        grad_gap = grads[0] if grads[0] is not None else torch.zeros_like(gap_in)
        grad_x = torch.ops.resnest_cuda.split_attention_input_backward(
            grad_out, flat_logits, grad_gap, radix, cardinality
        )
        param_grads = [None] * ctx.num_params
        for i, g in zip(wanted, grads[1:]):
            param_grads[i] = g
        ctx.graph = None
        return (grad_x, None, None, None, *param_grads)


def split_attention(x: torch.Tensor, radix: int, cardinality: int, attention, params=()) -> torch.Tensor:
    """The full split-attention tail: ``combine(x, attention(pool(x)))``, differentiable in x and `params`.

    Args:
        x: ``[B, R*C, H, W]`` (see :func:`split_attention_pool`).
        attention: callable ``gap [B, C] -> logits [B, R*C]`` (or ``[B, R*C, 1, 1]``), cardinal-major; typically
            fc1 -> norm -> ReLU -> fc2. It runs once, in forward (norm running statistics update once).
        params: the tensors `attention` uses that need gradients (e.g. ``list(module.parameters())``).

    In eager mode with gradients enabled this runs as one autograd node whose backward writes grad_x once (see
    ``_SplitAttention``); under ``torch.compile`` or without gradients it is the two registered ops, which the
    compiler traces like any other.
    """
    _check_x(x, radix, "split_attention")
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
    if needs_grad and not torch.compiler.is_compiling():
        return _SplitAttention.apply(x, radix, cardinality, attention, *params)
    logits = attention(split_attention_pool(x, radix))
    return split_attention_combine(x, logits, radix, cardinality)
