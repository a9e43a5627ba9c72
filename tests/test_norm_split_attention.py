"""The split-attention tail after its BatchNorm + ReLU without writing u = relu(bn0(x)) (ops.norm_split_attention,
the split_attention_norm_* ops): the forward ops bit for bit the plain ops after batch_norm_act, the backward ops
against an fp64 specification, SplitAttentionConv2d against the unfused path, what is saved and dispatched,
errors, opcheck and edge cases. Every test runs on the CPU kernels, the emulated CUDA kernels ("emu") and a GPU when
present."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from resnest_cuda import SplitAttentionConv2d, ops
from resnest_cuda.batch_norm import memory_format_of
from resnest_cuda.reference import split_attention_combine as reference_combine

from .helpers import devices
from .tolerances import REL_TOL, assert_matches_reference

OPS = torch.ops.resnest_cuda
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
EPS = 1e-5
# (batch, radix, cardinality, channels per split, H, W): softmax and sigmoid, cardinal groups, 1x1 maps, rows long
# enough to be split over several CUDA blocks, channels not a multiple of the vector width.
CASES = {
    "r2": (3, 2, 1, 8, 5, 7),
    "r2k2": (2, 2, 2, 4, 6, 5),
    "sigmoid": (2, 1, 1, 5, 3, 7),
    "r4k2": (2, 4, 2, 4, 9, 11),
    "1x1": (3, 2, 1, 8, 1, 1),
    "long-rows": (1, 2, 1, 3, 47, 51),
}
LAYOUTS = ["contiguous", "channels_last", "strided"]


def _layout(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other element of a wider tensor
        return torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]
    return t.contiguous()


def _inputs(case, dtype, layout, device, seed=0, affine_dtype=None):
    """x (the BatchNorm's input), grad_out, mean, var, weight, bias, logits, grad_gap."""
    b, r, k, c, h, w = CASES[case]
    ch = k * c
    g = torch.Generator().manual_seed(seed)
    stats = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(b, r * ch, h, w, generator=g, dtype=torch.float64) * 1.5 + 0.2
    grad_out = torch.randn(b, ch, h, w, generator=g, dtype=torch.float64)
    mean = torch.randn(r * ch, generator=g, dtype=torch.float64) * 0.3
    var = torch.rand(r * ch, generator=g, dtype=torch.float64) * 2 + 0.3
    weight = torch.rand(r * ch, generator=g, dtype=torch.float64) + 0.5
    bias = torch.randn(r * ch, generator=g, dtype=torch.float64) * 0.5
    logits = torch.randn(b, r * ch, generator=g, dtype=torch.float64) * 2
    grad_gap = torch.randn(b, ch, generator=g, dtype=torch.float64)
    x, grad_out = (_layout(t.to(dtype), layout).to(device) for t in (x, grad_out))
    mean, var = (t.to(stats).to(device) for t in (mean, var))
    weight, bias = (t.to(affine_dtype or stats).to(device) for t in (weight, bias))
    logits, grad_gap = (t.to(dtype).to(device) for t in (logits, grad_gap))
    return x, grad_out, mean, var, weight, bias, logits, grad_gap, r, k


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(CASES))
def test_forward_ops_equal_batch_norm_act_then_the_plain_ops(device, dtype, layout, case):
    """norm_pool / norm_combine are bit for bit pool / combine of batch_norm_act's output, in its memory format."""
    x, _, mean, var, w, b, logits, _, r, k = _inputs(case, dtype, layout, device)
    affines = [(w, b), (None, None), (w.to(dtype), b.to(dtype))]  # no affine, and parameters in x's dtype
    for weight, bias in affines:
        u = OPS.batch_norm_act(x, mean, var, weight, bias, None, EPS, True)
        assert (u == 0).any() and (u > 0).any()
        gap = OPS.split_attention_norm_pool(x, mean, var, weight, bias, EPS, r)
        assert torch.equal(gap, OPS.split_attention_pool(u, r))
        out = OPS.split_attention_norm_combine(x, mean, var, weight, bias, EPS, logits, r, k)
        expected = OPS.split_attention_combine(u, logits, r, k)
        assert torch.equal(out, expected) and out.stride() == expected.stride()
        assert out.abs().sum() > 0


def _specification(x, grad_out, mean, var, weight, bias, logits, grad_gap, r, k):
    """fp64: (grad_logits, sum_dy, sum_dy_xhat, grad_x) of the BatchNorm + ReLU + combine backward with an external
    gradient grad_gap for the pool, the statistics as constants of their own backward (batch statistics: the
    BatchNorm's input-gradient formula). u is rounded to x's dtype as the forward writes it."""
    xd, god = x.double(), grad_out.double()
    shape = (1, -1, 1, 1)
    invstd = torch.rsqrt(var.double() + EPS)
    scale = weight.double() * invstd
    shift = bias.double() - mean.double() * scale
    u = torch.relu(xd * scale.view(shape) + shift.view(shape)).to(x.dtype).double()
    lg = logits.double().requires_grad_(True)
    ud = u.clone().requires_grad_(True)
    out = reference_combine(ud, lg, r, k)
    grad_u, grad_logits = torch.autograd.grad(out, [ud, lg], god)
    hw = x.shape[2] * x.shape[3]
    grad_u = grad_u + (grad_gap.double() / hw).repeat(1, r)[:, :, None, None]
    grad_u = torch.where(u > 0, grad_u, torch.zeros_like(grad_u))
    xhat = (xd - mean.double().view(shape)) * invstd.view(shape)
    sum_dy = grad_u.sum(dim=(0, 2, 3))
    sum_dy_xhat = (grad_u * xhat).sum(dim=(0, 2, 3))
    count = x.shape[0] * hw
    grad_x = (weight.double() * invstd).view(shape) * (
        grad_u - (sum_dy.view(shape) + xhat * sum_dy_xhat.view(shape)) / count
    )
    return grad_logits, sum_dy, sum_dy_xhat, grad_x


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(CASES))
def test_backward_ops_against_the_specification(device, dtype, layout, case):
    x, grad_out, mean, var, w, b, logits, grad_gap, r, k = _inputs(case, dtype, layout, device, seed=1)
    grad_logits, sums = OPS.split_attention_norm_backward_reduce(grad_out, x, mean, var, w, b, EPS, logits, r, k)
    hw = x.shape[2] * x.shape[3]
    sum_dy, sum_dy_xhat = OPS.split_attention_norm_backward_sums(sums, logits, grad_gap, var, EPS, r, k, hw)
    count = torch.tensor(float(x.shape[0] * hw), dtype=mean.dtype, device=device)
    grad_x = OPS.split_attention_norm_backward_input(
        grad_out, x, mean, var, w, b, EPS, logits, grad_gap, sum_dy, sum_dy_xhat, count, r, k
    )
    expected = _specification(x.cpu(), grad_out.cpu(), mean.cpu(), var.cpu(), w.cpu(), b.cpu(), logits.cpu(),
                              grad_gap.cpu(), r, k)
    assert grad_x.shape == x.shape and grad_x.is_contiguous(memory_format=memory_format_of(x))
    tol = REL_TOL[dtype]
    # grad_logits is rounded to x's dtype; the sums are in the statistics dtype.
    assert_matches_reference(grad_logits.cpu(), expected[0], tol=tol, name="grad_logits")
    stats_tol = REL_TOL[mean.dtype] if dtype in (torch.float32, torch.float64) else REL_TOL[dtype]
    assert_matches_reference(sum_dy.cpu(), expected[1], tol=stats_tol, name="sum_dy")
    assert_matches_reference(sum_dy_xhat.cpu(), expected[2], tol=stats_tol, name="sum_dy_xhat")
    assert_matches_reference(grad_x.cpu(), expected[3], tol=tol, name="grad_x")


def _block(dtype, device, layout, radix=2, groups=2, seed=0):
    torch.manual_seed(seed)
    module = SplitAttentionConv2d(16, 16, radix=radix, groups=groups).to(device=device, dtype=dtype)
    x = torch.randn(4, 16, 9, 11, dtype=torch.float64).to(device=device, dtype=dtype)
    if layout == "channels_last":
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return module, x


def _train_step(module, x, fused_tail, monkeypatch):
    """Output, gradients (x and every parameter) and buffers after one forward + backward in training mode, with the
    tail fused (norm_split_attention) or as batch_norm_act followed by split_attention."""
    with monkeypatch.context() as m:
        if not fused_tail:
            m.setattr(ops, "norm_split_attention_applies", lambda *args, **kwargs: False)
        x = x.detach().clone().requires_grad_(True)
        out = module(x)
        probe = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape).to(out)
        out.backward(probe)
    grads = [x.grad] + [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    return out.detach(), grads, [buf.clone() for buf in module.buffers()]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("radix, groups", [(2, 2), (1, 1), (4, 1)])
def test_block_matches_the_unfused_tail(device, dtype, layout, radix, groups, monkeypatch):
    """SplitAttentionConv2d in training: the output and the running statistics are bit for bit those of the
    unfused tail; the gradients agree within the dtype's tolerance (the fused backward sums per image first and
    keeps grad_u in fp32 where the unfused one writes it in x's dtype)."""
    module, x = _block(dtype, device, layout, radix, groups)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    out_f, grads_f, bufs_f = _train_step(module, x, True, monkeypatch)
    module.load_state_dict(state)
    out_u, grads_u, bufs_u = _train_step(module, x, False, monkeypatch)
    assert torch.equal(out_f, out_u) and out_f.stride() == out_u.stride()
    for a, b in zip(bufs_f, bufs_u):
        assert torch.equal(a, b)
    assert grads_f[0].stride() == grads_u[0].stride()
    # fc1's bias feeds bn1: its true gradient is 0 and what is computed is rounding noise, so each gradient is
    # compared within the dtype's tolerance relative to the largest gradient as well as to itself.
    scale = max(g.abs().max().item() for g in grads_u)
    tol = REL_TOL[dtype]
    for i, (a, b) in enumerate(zip(grads_f, grads_u)):
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol * scale, msg=f"gradient {i}")
        if i != 5:
            assert_matches_reference(a.cpu(), b.cpu().double(), tol=tol, name=f"gradient {i}")


@pytest.mark.parametrize("device", devices())
def test_16_bit_gradients_are_no_less_accurate_than_the_unfused_tail(device, monkeypatch):
    """bf16: against the fp64 module on the same (bf16-valued) weights and input, the fused tail's gradients are at
    least as close as the unfused tail's."""
    module, x = _block(torch.bfloat16, device, "contiguous")
    state = {k: v.clone() for k, v in module.state_dict().items()}
    _, grads_f, _ = _train_step(module, x, True, monkeypatch)
    module.load_state_dict(state)
    _, grads_u, _ = _train_step(module, x, False, monkeypatch)
    module64 = SplitAttentionConv2d(16, 16, radix=2, groups=2).to(device=device, dtype=torch.float64)
    module64.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    _, grads_64, _ = _train_step(module64, x.double(), True, monkeypatch)
    for i in (0, 1, 2, 3):  # x, conv weight, bn0 weight and bias
        ref = grads_64[i]
        fused, unfused = ((g.double() - ref).norm().item() / ref.norm().item() for g in (grads_f[i], grads_u[i]))
        assert fused <= unfused * 1.05 + 1e-4, f"gradient {i}: fused {fused}, unfused {unfused}"


class _OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._schema.name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device", devices())
def test_u_is_neither_written_nor_saved(device, monkeypatch):
    """The fused tail dispatches the norm ops and none that writes u or grad_u, and saves exactly u's bytes less
    than the unfused tail."""
    module, x = _block(torch.float32, device, "contiguous")
    x.requires_grad_(True)
    saved = {}

    def run(fused_tail):
        storages = {}

        def pack(t):
            storages.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            return t

        with monkeypatch.context() as m:
            if not fused_tail:
                m.setattr(ops, "norm_split_attention_applies", lambda *args, **kwargs: False)
            names = _OpNames()
            with names, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = module(x)
            with names:
                out.sum().backward()
        params = {p.untyped_storage().data_ptr() for p in [*module.parameters(), *module.buffers()]}
        saved[fused_tail] = sum(n for ptr, n in storages.items() if ptr not in params)
        return {n.replace("resnest_cuda::", "") for n in names.names if n.startswith("resnest_cuda::")}

    fused_names = run(True)
    assert {
        "split_attention_norm_pool",
        "split_attention_norm_combine",
        "split_attention_norm_backward_reduce",
        "split_attention_norm_backward_sums",
        "split_attention_norm_backward_input",
    } <= fused_names
    # bn1 (the attention MLP's norm) still runs batch_norm_act; nothing of the split attention's plain ops does.
    assert not {n for n in fused_names if n.startswith("split_attention_") and "norm" not in n}
    unfused_names = run(False)
    assert "split_attention_input_backward" in unfused_names
    u_bytes = 4 * 16 * 2 * 9 * 11 * 4  # [B, R*C, H, W] fp32: the conv's 32 output channels
    assert saved[False] - saved[True] == u_bytes


@pytest.mark.parametrize("device", devices())
def test_opcheck(device):
    for dtype in (torch.float32, torch.bfloat16):
        x, grad_out, mean, var, w, b, logits, grad_gap, r, k = _inputs("r2k2", dtype, "contiguous", device)
        torch.library.opcheck(OPS.split_attention_norm_pool, (x, mean, var, w, b, EPS, r))
        torch.library.opcheck(OPS.split_attention_norm_combine, (x, mean, var, w, b, EPS, logits, r, k))
        args = (grad_out, x, mean, var, w, b, EPS, logits, r, k)
        torch.library.opcheck(OPS.split_attention_norm_backward_reduce, args)
        _, sums = OPS.split_attention_norm_backward_reduce(*args)
        hw = x.shape[2] * x.shape[3]
        torch.library.opcheck(OPS.split_attention_norm_backward_sums, (sums, logits, grad_gap, var, EPS, r, k, hw))
        sdy, sdx = OPS.split_attention_norm_backward_sums(sums, logits, grad_gap, var, EPS, r, k, hw)
        count = torch.tensor(float(x.shape[0] * hw), device=device)
        torch.library.opcheck(
            OPS.split_attention_norm_backward_input,
            (grad_out, x, mean, var, None, None, EPS, logits, grad_gap, sdy, sdx, count, r, k),
        )


@pytest.mark.parametrize("device", devices())
def test_bad_arguments_are_named_on_every_path(device):
    """The BatchNorm arguments are checked under the op's own name, by the device kernels and the Meta kernels."""
    x, grad_out, mean, var, w, b, logits, grad_gap, r, k = _inputs("r2", torch.float32, "contiguous", device)
    fake = torch._subclasses.FakeTensorMode()
    cases = [
        ((x, mean[:-1], var, w, b, EPS, r), ValueError, r"split_attention_norm_pool: mean must have shape \[16\]"),
        ((x, mean.double(), var, w, b, EPS, r), TypeError, "split_attention_norm_pool: mean must be Float"),
        ((x, mean, var, w, b, -1.0, r), ValueError, "split_attention_norm_pool: eps must be >= 0"),
        ((x, mean, var, w, b, EPS, 3), ValueError, r"split_attention_norm_pool: x.shape\[1\] \(16\) must be"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            OPS.split_attention_norm_pool(*args)
        with fake, pytest.raises(error, match=message):
            OPS.split_attention_norm_pool(*(fake.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
    with pytest.raises(ValueError, match="split_attention_norm_combine: logits must have shape"):
        OPS.split_attention_norm_combine(x, mean, var, w, b, EPS, logits[:, :-1], r, k)
    with pytest.raises(ValueError, match="split_attention_norm_backward_reduce: grad_out must have shape"):
        OPS.split_attention_norm_backward_reduce(x, x, mean, var, w, b, EPS, logits, r, k)
    _, sums = OPS.split_attention_norm_backward_reduce(grad_out, x, mean, var, w, b, EPS, logits, r, k)
    with pytest.raises(ValueError, match="split_attention_norm_backward_sums: grad_gap must have shape"):
        OPS.split_attention_norm_backward_sums(sums, logits, grad_gap[:, :-1], var, EPS, r, k, 35)
    with pytest.raises(ValueError, match=r"split_attention_norm_backward_sums: hw \(H\*W of x\) must be >= 1"):
        OPS.split_attention_norm_backward_sums(sums, logits, grad_gap, var, EPS, r, k, 0)
    sdy = torch.zeros(16, device=device)
    with pytest.raises(TypeError, match="split_attention_norm_backward_input: count must be Float"):
        OPS.split_attention_norm_backward_input(
            grad_out, x, mean, var, w, b, EPS, logits, grad_gap, sdy, sdy, torch.tensor(3.0, dtype=torch.float64,
                                                                                        device=device), r, k
        )


@pytest.mark.parametrize("device", devices())
def test_the_ops_refuse_to_be_differentiated_on_their_own(device):
    x, _, mean, var, w, b, logits, _, r, k = _inputs("r2", torch.float64, "contiguous", device)
    x.requires_grad_(True)
    for out in (
        OPS.split_attention_norm_pool(x, mean, var, w, b, EPS, r),
        OPS.split_attention_norm_combine(x, mean, var, w, b, EPS, logits, r, k),
    ):
        with pytest.raises(RuntimeError, match="not differentiable on its own.*norm_split_attention"):
            out.sum().backward()


@pytest.mark.parametrize("device", devices())
def test_empty_batch_and_zero_channels(device):
    for b, ch in [(0, 8), (2, 0)]:
        x = torch.randn(b, 2 * ch, 3, 4, device=device)
        grad_out = torch.randn(b, ch, 3, 4, device=device)
        mean, var = torch.zeros(2 * ch, device=device), torch.ones(2 * ch, device=device)
        logits, grad_gap = torch.randn(b, 2 * ch, device=device), torch.randn(b, ch, device=device)
        assert OPS.split_attention_norm_pool(x, mean, var, None, None, EPS, 2).shape == (b, ch)
        assert OPS.split_attention_norm_combine(x, mean, var, None, None, EPS, logits, 2, 1).shape == (b, ch, 3, 4)
        grad_logits, sums = OPS.split_attention_norm_backward_reduce(grad_out, x, mean, var, None, None, EPS,
                                                                     logits, 2, 1)
        assert grad_logits.shape == logits.shape and sums.shape == (4, b, 2 * ch) and not sums.any()
        sdy, sdx = OPS.split_attention_norm_backward_sums(sums, logits, grad_gap, var, EPS, 2, 1, 12)
        assert sdy.shape == (2 * ch,) and not sdy.any() and not sdx.any()
        count = torch.tensor(0.0, device=device)
        dx = OPS.split_attention_norm_backward_input(grad_out, x, mean, var, None, None, EPS, logits, grad_gap, sdy,
                                                     sdx, count, 2, 1)
        assert dx.shape == x.shape


@pytest.mark.parametrize("device", devices())
def test_non_finite_inputs_propagate_as_in_the_unfused_ops(device):
    x, _, mean, var, w, b, logits, _, r, k = _inputs("r2", torch.float32, "contiguous", device)
    x[0, 3, 2, 2] = float("nan")
    x[1, 5, 0, 0] = float("inf")
    x[2, 9, 1, 1] = float("-inf")
    u = OPS.batch_norm_act(x, mean, var, w, b, None, EPS, True)
    for fused, plain in [
        (OPS.split_attention_norm_pool(x, mean, var, w, b, EPS, r), OPS.split_attention_pool(u, r)),
        (OPS.split_attention_norm_combine(x, mean, var, w, b, EPS, logits, r, k),
         OPS.split_attention_combine(u, logits, r, k)),
    ]:
        assert not fused.isfinite().all()
        torch.testing.assert_close(fused, plain, rtol=0, atol=0, equal_nan=True)
