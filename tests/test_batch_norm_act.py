"""The fused BatchNorm (+ residual) (+ ReLU) ops against the plain-PyTorch specification and torch's BatchNorm:
values, gradients, running statistics, row masks, layouts, dtypes, edge cases, errors, opcheck, torch.compile and
higher derivatives. Every test runs on the CPU kernels, the emulated CUDA kernels ("emu") and a GPU when present."""

import pytest
import torch
from torch import nn

from resnest_cuda import batch_norm as fused
from resnest_cuda.reference import batch_norm as reference

from .helpers import devices
from .tolerances import REL_TOL, assert_matches_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# x shapes: detection-like, 1x1 maps (the split-attention bn1), 2-D and 3-D inputs, channels not a multiple of 32.
SHAPES = [(4, 8, 5, 7), (3, 40, 1, 1), (6, 5), (2, 3, 9), (2, 33, 4, 3)]


def _bn(c: int, device, affine=True, momentum=0.1) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, affine=affine, momentum=momentum).to(device)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    bn.running_mean.uniform_(-0.2, 0.2)
    return bn


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a non-contiguous view: every other element of a wider tensor
        wide = torch.stack([t, torch.zeros_like(t)], dim=-1)
        return wide[..., 0]
    return t.contiguous()


def _case(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.7).to(device)
    res = torch.randn(shape, generator=g, dtype=torch.float64).to(device)
    gy = torch.randn(shape, generator=g, dtype=torch.float64).to(device)
    rows = torch.rand(shape[0], generator=g) > 0.4
    rows[0] = True
    return x.to(dtype), res.to(dtype), gy.to(dtype), rows.to(device)


def _run(fn, x, res, gy, weight, bias):
    x = x.detach().requires_grad_(True)
    res = res.detach().requires_grad_(True) if res is not None else None
    y = fn(x, res)
    y.backward(gy)
    return y, x.grad, res.grad if res is not None else None, weight.grad, bias.grad


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("variant", ["relu", "residual_relu", "plain", "rows_relu", "rows_residual"])
def test_matches_specification(device, dtype, shape, variant):
    """Output, input/residual/weight/bias gradients and running statistics against the fp64 specification."""
    x, res, gy, rows = _case(shape, dtype, device)
    use_rows = rows if variant.startswith("rows") else None
    residual = res if "residual" in variant else None
    relu = variant != "plain"
    bn = _bn(shape[1], device)
    if dtype == torch.float64:
        bn = bn.double()
    ref = _bn(shape[1], device).double()
    ref.load_state_dict(bn.state_dict())
    ref.running_mean.copy_(bn.running_mean)

    def run_fused(xi, ri):
        return fused.batch_norm_act(bn, xi, ri, relu, use_rows)

    def run_ref(xi, ri):
        y, mean, var, count = reference.batch_norm_act(xi, ref.weight, ref.bias, ri, use_rows, ref.eps, relu)
        reference.update_running_stats(
            ref.running_mean, ref.running_var, ref.num_batches_tracked, ref.momentum, mean, var, count
        )
        return y

    got = _run(run_fused, x, residual, gy, bn.weight, bn.bias)
    want = _run(
        run_ref, x.double(), residual.double() if residual is not None else None, gy.double(), ref.weight, ref.bias
    )
    names = ["y", "grad_x", "grad_residual", "grad_weight", "grad_bias"]
    for name, a, e in zip(names, got, want):
        if e is None:
            assert a is None, name
            continue
        assert a.dtype == (x.dtype if name in ("y", "grad_x", "grad_residual") else bn.weight.dtype), name
        # Reductions over many 16-bit inputs: the weight/bias gradients are fp32 sums of rounded products.
        tol = None if name in ("y", "grad_x", "grad_residual") else max(REL_TOL[dtype], 1e-5)
        if dtype == torch.float64 and name in ("grad_weight", "grad_bias"):
            tol = 1e-10
        assert_matches_reference(a, e, tol=tol, name=name)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert_matches_reference(bn.running_mean.double(), ref.running_mean, tol=tol, name="running_mean")
    assert_matches_reference(bn.running_var.double(), ref.running_var, tol=tol, name="running_var")
    assert bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layouts(device, layout, dtype):
    """channels_last stays channels_last (output and input gradient); strided inputs give the NCHW results."""
    shape = (3, 6, 5, 4)
    x, res, gy, rows = _case(shape, dtype, device, seed=1)
    bn = _bn(6, device)
    base = _bn(6, device)
    base.load_state_dict(bn.state_dict())
    xl, rl, gl = _layout(x, layout), _layout(res, layout), _layout(gy, layout)
    got = _run(lambda a, b: fused.batch_norm_act(bn, a, b, True, rows), xl, rl, gl, bn.weight, bn.bias)
    want = _run(lambda a, b: fused.batch_norm_act(base, a, b, True, rows), x, res, gy, base.weight, base.bias)
    if layout == "channels_last":
        assert got[0].is_contiguous(memory_format=torch.channels_last)
        assert got[1].is_contiguous(memory_format=torch.channels_last)
    for a, e in zip(got, want):
        tol = REL_TOL[dtype] if a.dtype == dtype else 1e-5
        assert_matches_reference(a, e.double(), tol=tol)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("momentum", [0.1, None])
def test_equals_torch_batch_norm(device, momentum):
    """Without a mask: the same output, gradients and running statistics as nn.BatchNorm2d -> (+ residual) -> ReLU,
    over three steps (the cumulative average of momentum=None included)."""
    bn = _bn(7, device, momentum=momentum)
    tbn = _bn(7, device, momentum=momentum)
    tbn.load_state_dict(bn.state_dict())
    for step in range(3):
        x, res, gy, _ = _case((5, 7, 6, 3), torch.float32, device, seed=10 + step)
        got = _run(lambda a, b: fused.batch_norm_act(bn, a, b), x, res, gy, bn.weight, bn.bias)
        want = _run(lambda a, b: torch.relu(tbn(a) + b), x, res, gy, tbn.weight, tbn.bias)
        for a, e in zip(got, want):
            assert_matches_reference(a, e.double(), tol=2e-5)
    torch.testing.assert_close(bn.running_mean, tbn.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, tbn.running_var, rtol=1e-5, atol=1e-6)
    assert bn.num_batches_tracked.item() == tbn.num_batches_tracked.item() == 3


@pytest.mark.parametrize("device", devices())
def test_rows_equal_batch_norm_of_the_selected_rows(device):
    """On the selected rows the output and running statistics are BatchNorm's on x[rows]; the other rows are
    normalised with the same statistics; gradients of unselected rows carry no statistics term."""
    x, _, gy, rows = _case((6, 4, 3, 3), torch.float64, device, seed=3)
    bn = _bn(4, device).double()
    tbn = _bn(4, device).double()
    tbn.load_state_dict(bn.state_dict())
    y = fused.batch_norm_act(bn, x, relu=False, rows=rows)
    torch.testing.assert_close(y[rows], tbn(x[rows]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_mean, tbn.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_var, tbn.running_var, rtol=1e-12, atol=1e-12)
    # Unselected rows: y = (x - mean) * invstd * w + b with the selected rows' statistics.
    tbn.eval()
    mean, var = x[rows].mean((0, 2, 3)), x[rows].var((0, 2, 3), unbiased=False)
    expect = (x - mean.view(1, -1, 1, 1)) / (var.view(1, -1, 1, 1) + bn.eps).sqrt() * bn.weight.view(
        1, -1, 1, 1
    ) + bn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", devices())
def test_edge_cases(device):
    bn = _bn(3, device)
    # Empty batch: empty output, running statistics unchanged, counted as a step like BatchNorm.
    before = bn.running_mean.clone()
    x = torch.zeros(0, 3, 4, 4, device=device, requires_grad=True)
    y = fused.batch_norm_act(bn, x, torch.zeros(0, 3, 4, 4, device=device))
    y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape
    torch.testing.assert_close(bn.running_mean, before)
    # Zero channels.
    empty = nn.BatchNorm2d(0).to(device)
    assert fused.batch_norm_act(empty, torch.zeros(2, 0, 3, 3, device=device)).shape == (2, 0, 3, 3)
    # No selected row: output finite, statistics untouched.
    x = torch.randn(4, 3, 2, 2, device=device)
    y = fused.batch_norm_act(bn, x, rows=torch.zeros(4, dtype=torch.bool, device=device))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(bn.running_mean, before)
    # One selected element: statistics of one value, running statistics untouched (BatchNorm would refuse it).
    one = torch.tensor([True, False, False, False], device=device)
    y = fused.batch_norm_act(bn, torch.randn(4, 3, 1, 1, device=device), rows=one)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(bn.running_mean, before)
    # One value per channel without a mask: BatchNorm's error.
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fused.batch_norm_act(bn, torch.randn(1, 3, 1, 1, device=device))


@pytest.mark.parametrize("device", devices())
def test_non_finite_inputs_propagate(device):
    """A NaN or inf in a channel makes that channel's statistics non-finite, as in BatchNorm; other channels are
    unaffected."""
    x = torch.randn(4, 3, 3, 3, device=device)
    x[1, 1, 0, 0] = float("nan")
    x[2, 2, 1, 1] = float("inf")
    bn, tbn = _bn(3, device), _bn(3, device)
    tbn.load_state_dict(bn.state_dict())
    y = fused.batch_norm_act(bn, x, relu=False)
    ref = tbn(x)
    assert torch.isnan(y[:, 1]).all() and torch.isnan(ref[:, 1]).all()
    assert not torch.isfinite(y[:, 2]).all()
    torch.testing.assert_close(y[:, 0], ref[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", devices())
def test_gradcheck_and_gradgradcheck(device):
    """fp64 gradcheck of x, weight, bias and residual, with and without rows; second derivatives through the
    specification."""
    g = torch.Generator().manual_seed(5)
    bn = _bn(3, device).double()
    rows = torch.tensor([True, False, True, True], device=device)
    for use_rows in (None, rows):
        x = torch.randn(4, 3, 2, 3, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
        res = torch.randn(4, 3, 2, 3, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
        w = bn.weight.detach().clone().requires_grad_(True)
        b = bn.bias.detach().clone().requires_grad_(True)

        def f(x, res, w, b, use_rows=use_rows):
            m = nn.BatchNorm2d(3, track_running_stats=False).to(device).double()
            del m.weight, m.bias  # plain tensors in place of the parameters: gradcheck differentiates w and b
            m.weight, m.bias = w, b
            return fused.batch_norm_act(m, x, res, True, use_rows)

        assert torch.autograd.gradcheck(f, (x, res, w, b))
        assert torch.autograd.gradgradcheck(f, (x, res, w, b))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_recomputed_relu_mask_equals_the_forward(device, dtype):
    """Without a residual the backward recomputes the ReLU mask from x and the statistics; with y it reads the mask
    from the forward output. On inputs packed around the ReLU's threshold (x * scale + shift within a few ulps of 0,
    and below the 16-bit types' smallest values) both give bitwise the same sums and input gradient, and the
    masked gradient matches torch's ReLU backward on the forward's y."""
    ops = torch.ops.resnest_cuda
    stats = torch.float64 if dtype == torch.float64 else torch.float32
    c = 6
    g = torch.Generator().manual_seed(3)
    mean = torch.linspace(-0.7, 0.9, c, dtype=stats)
    var = torch.linspace(0.3, 2.5, c, dtype=stats)
    w = torch.linspace(0.4, 1.7, c, dtype=stats)
    b = torch.linspace(-0.5, 0.6, c, dtype=stats)
    scale = w.double() / torch.sqrt(var.double() + 1e-5)
    root = mean.double() - b.double() / scale  # x * scale + shift = 0 here
    spread = torch.tensor([1e-2, 1e-4, 1e-6, 1e-8, 1e-10, 0.0], dtype=torch.float64)
    noise = torch.randn(16, c, 5, 7, generator=g, dtype=torch.float64)
    picks = spread[torch.randint(0, len(spread), (16, 1, 5, 7), generator=g)]
    x = (root.view(1, c, 1, 1) + noise * picks).to(dtype).to(device)
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype).to(device)
    mean, var, w, b = (t.to(device) for t in (mean, var, w, b))
    y = ops.batch_norm_act(x, mean, var, w, b, None, 1e-5, True)
    assert (y == 0).any() and (y > 0).any()
    s_read = ops.batch_norm_act_backward_reduce(grad, x, y, mean, var, w, b, 1e-5, True)
    s_comp = ops.batch_norm_act_backward_reduce(grad, x, None, mean, var, w, b, 1e-5, True)
    masked = torch.ops.aten.threshold_backward(grad, y, 0)  # torch's ReLU backward on the forward's output
    assert torch.equal(s_read[2], masked)
    assert s_comp[2].numel() == 0
    assert torch.equal(s_read[0], s_comp[0]) and torch.equal(s_read[1], s_comp[1])
    count = torch.tensor(float(x.numel() // c), dtype=stats, device=device)
    args = (mean, var, w, b, s_read[0], s_read[1], count, None, 1e-5)
    dx_comp = ops.batch_norm_act_backward_input(grad, x, *args, True)
    dx_read = ops.batch_norm_act_backward_input(s_read[2], x, *args, False)
    assert torch.equal(dx_comp, dx_read)


@pytest.mark.parametrize("device", devices())
def test_opcheck(device):
    ops = torch.ops.resnest_cuda
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 4, 5, 2, device=device, dtype=dtype)
        rows = torch.tensor([True, False, True], device=device)
        rm, rv = torch.zeros(4, device=device), torch.ones(4, device=device)
        nbt = torch.zeros((), dtype=torch.long, device=device)
        torch.library.opcheck(ops.batch_norm_stats, (x, rows, rm, rv, nbt, 0.1))
        mean, var, count = ops.batch_norm_stats(x, rows)
        w, b = torch.rand(4, device=device) + 0.5, torch.randn(4, device=device)
        res = torch.randn_like(x)
        torch.library.opcheck(ops.batch_norm_act, (x, mean, var, w, b, res, 1e-5, True))
        y = ops.batch_norm_act(x, mean, var, w, b, res, 1e-5, True)
        g = torch.randn_like(x)
        for y_read in (y, None):  # mask read from y (g written) or recomputed from x
            torch.library.opcheck(ops.batch_norm_act_backward_reduce, (g, x, y_read, mean, var, w, b, 1e-5, True))
        sdy, sdx, _ = ops.batch_norm_act_backward_reduce(g, x, None, mean, var, w, b, 1e-5, True)
        for relu in (True, False):
            torch.library.opcheck(
                ops.batch_norm_act_backward_input, (g, x, mean, var, w, b, sdy, sdx, count, rows, 1e-5, relu)
            )


@pytest.mark.parametrize("device", devices())
def test_torch_compile_fullgraph(device):
    """A conv -> fused BN + residual + ReLU block compiles without graph breaks and matches eager, running
    statistics included."""
    torch._dynamo.reset()

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x, rows):
            return fused.batch_norm_act(self.bn, self.conv(x), x, True, rows)

    torch.manual_seed(0)
    eager = Block().to(device)
    compiled_module = Block().to(device)
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 4, 5, 5, device=device)
    rows = torch.tensor([True, True, False], device=device)
    a = eager(x, rows)
    b = compiled(x, rows)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(eager.conv.weight.grad, compiled_module.conv.weight.grad)
    torch.testing.assert_close(eager.bn.weight.grad, compiled_module.bn.weight.grad)
    torch.testing.assert_close(eager.bn.running_mean, compiled_module.bn.running_mean)
    torch.testing.assert_close(eager.bn.running_var, compiled_module.bn.running_var)


@pytest.mark.parametrize("device", devices())
def test_bad_arguments_raise_clear_errors(device):
    ops = torch.ops.resnest_cuda
    x = torch.randn(3, 4, 2, 2, device=device)
    with pytest.raises(ValueError, match="rows must have shape"):
        ops.batch_norm_stats(x, torch.ones(2, dtype=torch.bool, device=device))
    with pytest.raises(TypeError, match="rows must be a bool tensor"):
        ops.batch_norm_stats(x, torch.ones(3, device=device))
    with pytest.raises(TypeError, match="x must be float32"):
        ops.batch_norm_stats(x.long())
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        ops.batch_norm_stats(torch.randn(5, device=device))
    mean, var, count = ops.batch_norm_stats(x)
    with pytest.raises(ValueError, match="weight must have shape \\[4\\]"):
        ops.batch_norm_act(x, mean, var, torch.ones(3, device=device), None, None, 1e-5, True)
    with pytest.raises(ValueError, match="residual must have the shape of x"):
        ops.batch_norm_act(x, mean, var, None, None, torch.ones(3, 4, device=device), 1e-5, True)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        ops.batch_norm_act(x, mean, var, None, None, None, -1.0, True)
    with pytest.raises(ValueError, match="y \\(the forward output\\) is only read with relu=True"):
        ops.batch_norm_act_backward_reduce(x, x, x, mean, var, None, None, 1e-5, False)
    with pytest.raises(ValueError, match="bias must have shape \\[4\\]"):
        ops.batch_norm_act_backward_reduce(x, x, None, mean, var, None, torch.ones(3, device=device), 1e-5, True)
    with pytest.raises(ValueError, match="grad_out2 and grad_out3 \\(further parts of grad_out\\) need y"):
        ops.batch_norm_act_backward_reduce(x, x, None, mean, var, None, None, 1e-5, True, x)
    with pytest.raises(ValueError, match="grad_out3 needs grad_out2"):
        ops.batch_norm_act_backward_reduce(x, x, x, mean, var, None, None, 1e-5, True, None, x)
    with pytest.raises(ValueError, match="grad_out2 must have the shape of x"):
        ops.batch_norm_act_backward_reduce(x, x, x, mean, var, None, None, 1e-5, True, x[:1])
    with pytest.raises(ValueError, match="aliases must be 1, 2 or 3"):
        fused.batch_norm_act(nn.BatchNorm2d(4).to(device), x, x, aliases=4)
    with pytest.raises(ValueError, match="count must be a 0-d tensor"):
        ops.batch_norm_act_backward_input(x, x, mean, var, None, None, mean, var, mean, None, 1e-5, True)
    with pytest.raises(ValueError, match="running_mean and running_var must be given together"):
        ops.batch_norm_stats(x, None, torch.zeros(4, device=device), None)
    with pytest.raises(ValueError, match="rows must be a bool tensor of shape"):
        fused.batch_norm_act(nn.BatchNorm2d(4).to(device), x, rows=torch.ones(3, device=device))


def test_other_norms_run_as_modules():
    """Eval-mode BatchNorm, GroupNorm and a folded Identity run as modules, then + residual, then ReLU."""
    x, res = torch.randn(2, 32, 3, 3), torch.randn(2, 32, 3, 3)
    for norm in (nn.BatchNorm2d(32).eval(), nn.GroupNorm(8, 32), nn.Identity()):
        torch.testing.assert_close(fused.batch_norm_act(norm, x, res), torch.relu(norm(x) + res))
        assert not fused.fused_applies(norm, x)


def test_torch_func_uses_the_specification():
    """Under torch.func the fused ops cannot run; the plain-PyTorch specification gives the same gradient. (As with
    torch's BatchNorm, running statistics cannot be updated inside a transform: track_running_stats=False.)"""
    bn = nn.BatchNorm2d(3, track_running_stats=False).double()
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    rows = torch.tensor([True, True, False, True])

    def f(x):
        return fused.batch_norm_act(bn, x, rows=rows).square().sum()

    g_func = torch.func.grad(f)(x)
    xr = x.clone().requires_grad_(True)
    f(xr).backward()
    torch.testing.assert_close(g_func, xr.grad)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fixed_statistics_one_pass(device, dtype):
    """Eval-mode BatchNorm and FrozenBatchNorm2d with nothing needing a gradient (frozen stages, inference) run the
    one-pass op with their running statistics: the modules' result, in both layouts; with gradients, the modules."""
    from resnest_cuda.norm import FrozenBatchNorm2d

    x, res, _, _ = _case((3, 6, 5, 4), dtype, device, seed=7)
    bn = _bn(6, device).eval()
    bn.running_var.uniform_(0.5, 2.0)
    frozen = FrozenBatchNorm2d(6).to(device)
    frozen.load_state_dict(bn.state_dict())
    for norm in (bn, frozen):
        for layout in ("nchw", "channels_last"):
            xl, rl = _layout(x, layout), _layout(res, layout)
            with torch.no_grad():
                assert fused.frozen_applies(norm, xl, rl)
                got = fused.batch_norm_act(norm, xl, rl)
                want = torch.relu(norm(xl.float()).double() + rl.double())
            assert got.dtype == dtype
            assert_matches_reference(got, want, name=f"{type(norm).__name__} {layout}")
            if layout == "channels_last":
                assert got.is_contiguous(memory_format=torch.channels_last)
    xg = x.detach().requires_grad_(True)
    assert not fused.frozen_applies(bn, xg)  # a gradient is needed: the module path
    fused.batch_norm_act(bn, xg).sum().backward()
    assert xg.grad is not None


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_output_gradient_in_parts(device, dtype):
    """The reduction given the output gradient in two or three parts (grad_out2, grad_out3) equals it given their
    sum: bit for bit where the sum is exact in x's dtype (the parts here are multiples of one tensor), and within
    the dtype's tolerance for arbitrary parts (the fused sum is in fp32, autograd's in x's dtype)."""
    x, res, gy, _ = _case((4, 8, 5, 7), dtype, device, seed=2)
    bn = _bn(8, device)
    mean, var, count = torch.ops.resnest_cuda.batch_norm_stats(x)
    w, b = bn.weight.detach().to(mean.dtype), bn.bias.detach().to(mean.dtype)
    args = (mean, var, w, b, 1e-5, True)
    y = torch.ops.resnest_cuda.batch_norm_act(x, mean, var, w, b, res, 1e-5, True)
    reduce = torch.ops.resnest_cuda.batch_norm_act_backward_reduce
    whole = reduce(gy, x, y, *args)
    halves = reduce(gy * 0.5, x, y, *args, gy * 0.25, gy * 0.25)
    for a, b in zip(halves, whole):
        assert torch.equal(a, b)
    g1, g2, g3 = _case((4, 8, 5, 7), dtype, device, seed=3)[:3]
    parts = reduce(g1, x, y, *args, g2, g3)
    summed = reduce(((g1.double() + g2.double()) + g3.double()).to(dtype), x, y, *args)
    for a, b in zip(parts, summed):
        assert_matches_reference(a.cpu(), b.cpu().double(), tol=REL_TOL[dtype] * 4)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_aliases_carry_their_gradients_to_one_backward(device, layout):
    """batch_norm_act(..., aliases=3) with a residual: three views of one output; the gradients that reach each
    arrive at the backward apart and give what one output with their sum gives."""
    x, res, gy, _ = _case((4, 8, 5, 7), torch.float64, device, seed=4)
    x, res = _layout(x, layout), _layout(res, layout)
    probes = [_case((4, 8, 5, 7), torch.float64, device, seed=s)[2] for s in (5, 6, 7)]
    results = []
    for aliases in (3, 1):
        torch.manual_seed(0)
        bn = _bn(8, device).double()
        xa, ra = x.clone().requires_grad_(True), res.clone().requires_grad_(True)
        out = fused.batch_norm_act(bn, xa, ra, aliases=aliases)
        outs = out if aliases > 1 else (out,) * 3
        if aliases > 1:
            assert len(outs) == 3 and all(o._base is outs[0] for o in outs[1:])
        sum((o * p).sum() for o, p in zip(outs, probes)).backward()
        results.append([outs[0], xa.grad, ra.grad, bn.weight.grad, bn.bias.grad, bn.running_var])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_aliases_outside_the_fused_path_are_the_output_itself():
    bn = _bn(4, "cpu").eval()
    x, res = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    outs = fused.batch_norm_act(bn, x, res, aliases=2)
    assert len(outs) == 2 and outs[0] is outs[1]
    bn.train()
    outs = fused.batch_norm_act(bn, x, None, aliases=2)  # no residual: no aliases either
    assert outs[0] is outs[1]
