"""Fused split-attention ops against the pure-PyTorch reference (resnest_cuda.reference)."""

import itertools

import pytest
import torch

import resnest_cuda
from resnest_cuda import reference as ref

from .helpers import devices, requires_cuda

# (atol, rtol) for comparing a dtype's fused result with the fp64 reference cast to that dtype.
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
SHAPES = [(1, 1), (7, 7), (5, 9), (3, 1), (16, 12)]  # (H, W): 1x1 maps, odd sizes, a wider map


def make_inputs(batch, radix, channels, h, w, dtype, device, layout="contiguous", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, radix * channels, h, w, generator=g, dtype=torch.float64)
    logits = torch.randn(batch, radix * channels, generator=g, dtype=torch.float64) * 2
    x = x.to(device=device, dtype=dtype)
    logits = logits.to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontiguous":
        # A strided view: every other column of a wider tensor.
        wide = torch.zeros(batch, radix * channels, h, 2 * w, dtype=dtype, device=device)
        wide[..., ::2] = x
        x = wide[..., ::2]
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    return x, logits


def check_close(actual, expected, dtype):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual, expected.to(actual.dtype), atol=atol, rtol=rtol)


def reference_outputs_and_grads(x, logits, radix, cardinality, grad_gap, grad_out):
    """fp64 reference of pool and combine and their gradients with respect to x and logits."""
    x64 = x.detach().double().requires_grad_()
    l64 = logits.detach().double().requires_grad_()
    gap = ref.split_attention_pool(x64, radix)
    out = ref.split_attention_combine(x64, l64, radix, cardinality)
    torch.autograd.backward([gap, out], [grad_gap.double(), grad_out.double()])
    return gap.detach(), out.detach(), x64.grad, l64.grad


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("radix,cardinality", list(itertools.product([1, 2, 4], [1, 2, 4])))
@pytest.mark.parametrize("batch", [0, 1, 3])
def test_matches_reference_fp32(device, radix, cardinality, batch):
    channels = 8
    for h, w in SHAPES:
        x, logits = make_inputs(batch, radix, channels, h, w, torch.float32, device)
        _run_and_compare(x, logits, radix, cardinality, torch.float32)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
def test_dtypes_and_layouts(device, dtype, layout):
    for radix, cardinality in [(1, 1), (2, 1), (4, 2)]:
        for h, w in [(1, 1), (7, 7), (6, 10)]:
            x, logits = make_inputs(2, radix, 16, h, w, dtype, device, layout, seed=radix + h)
            _run_and_compare(x, logits, radix, cardinality, dtype)


def _run_and_compare(x, logits, radix, cardinality, dtype):
    x = x.detach().requires_grad_()
    logits = logits.detach().requires_grad_()
    gap = resnest_cuda.split_attention_pool(x, radix)
    out = resnest_cuda.split_attention_combine(x, logits, radix, cardinality)
    assert gap.shape == (x.shape[0], x.shape[1] // radix) and gap.dtype == x.dtype
    assert out.shape == (x.shape[0], x.shape[1] // radix, x.shape[2], x.shape[3]) and out.dtype == x.dtype
    grad_gap = torch.randn_like(gap)
    grad_out = torch.randn_like(out)
    ref_gap, ref_out, ref_dx, ref_dl = reference_outputs_and_grads(x, logits, radix, cardinality, grad_gap, grad_out)
    check_close(gap, ref_gap, dtype)
    check_close(out, ref_out, dtype)
    if x.numel() == 0:
        return
    dx, dl = torch.autograd.grad([gap, out], [x, logits], [grad_gap, grad_out])
    # Gradients sum over H*W elements: scale the tolerance with the reduction length for low precision.
    check_close(dx, ref_dx, dtype)
    scale = max(1.0, (x.shape[2] * x.shape[3]) ** 0.5) if dtype in (torch.float16, torch.bfloat16) else 1.0
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(dl, ref_dl.to(dl.dtype), atol=atol * scale * 4, rtol=rtol * 4)


@pytest.mark.parametrize("device", devices())
def test_output_keeps_memory_format(device):
    x, logits = make_inputs(2, 2, 8, 5, 6, torch.float32, device, "channels_last")
    out = resnest_cuda.split_attention_combine(x, logits, 2, 1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    x = x.detach().requires_grad_()
    resnest_cuda.split_attention_combine(x, logits, 2, 1).sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    out = resnest_cuda.split_attention_combine(x.detach().contiguous(), logits, 2, 1)
    assert out.is_contiguous()


@pytest.mark.parametrize("device", devices())
def test_logits_as_conv_output(device):
    """fc2 is a 1x1 conv: logits of shape [B, R*C, 1, 1] work and get a gradient of that shape."""
    x, logits = make_inputs(3, 2, 8, 4, 4, torch.float32, device)
    logits4 = logits.reshape(3, 16, 1, 1).detach().requires_grad_()
    out = resnest_cuda.split_attention_combine(x, logits4, 2, 2)
    torch.testing.assert_close(out, ref.split_attention_combine(x, logits, 2, 2))
    out.sum().backward()
    assert logits4.grad.shape == (3, 16, 1, 1)


def test_radix2_is_sigmoid_of_difference():
    """For K = 1, R = 2 the attention of split 0 is sigmoid(a[c] - a[C + c]) (SPEC §3)."""
    x = torch.zeros(1, 4, 1, 1)
    x[0, 0] = 1.0  # split 0, channel 0
    x[0, 1] = 1.0  # split 0, channel 1
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.25]])
    out = resnest_cuda.split_attention_combine(x, logits, 2, 1).flatten()
    expected = torch.sigmoid(torch.tensor([0.5 - 2.0, -1.0 - 0.25]))
    torch.testing.assert_close(out, expected)


def test_cardinality_layout_hand_case():
    """R = 2, K = 2, C = 2: logits are cardinal-major [k, r, c/K]; x is radix-major [r, k, c/K]."""
    # Logit order: (k0 r0), (k0 r1), (k1 r0), (k1 r1). Make k0 pick r1 and k1 pick r0, sharply.
    logits = torch.tensor([[-50.0, 50.0, 50.0, -50.0]])
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1, 1)  # (r0 k0), (r0 k1), (r1 k0), (r1 k1)
    out = resnest_cuda.split_attention_combine(x, logits, 2, 2).flatten()
    torch.testing.assert_close(out, torch.tensor([3.0, 2.0]))
    gap = resnest_cuda.split_attention_pool(x, 2).flatten()
    torch.testing.assert_close(gap, torch.tensor([4.0, 6.0]))


def test_extreme_logits_are_finite():
    x, _ = make_inputs(2, 4, 4, 3, 3, torch.float32, "cpu")
    logits = torch.tensor([1e4, -1e4, 0.0, 88.0] * 4).repeat(2, 1)
    out = resnest_cuda.split_attention_combine(x, logits, 4, 1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref.split_attention_combine(x, logits, 4, 1))


@pytest.mark.parametrize("radix,cardinality", [(1, 1), (2, 1), (2, 2), (4, 2)])
def test_gradcheck_fp64(radix, cardinality):
    x, logits = make_inputs(2, radix, 4, 3, 5, torch.float64, "cpu", seed=3)
    x.requires_grad_()
    logits.requires_grad_()

    def fn(x, logits):
        gap = resnest_cuda.split_attention_pool(x, radix)
        out = resnest_cuda.split_attention_combine(x, logits, radix, cardinality)
        return out * gap[:, :, None, None]

    assert torch.autograd.gradcheck(fn, (x, logits))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(fn, (xc, logits))


@pytest.mark.parametrize("device", devices())
def test_opcheck(device):
    samples = []
    for dtype, layout in [(torch.float32, "contiguous"), (torch.float64, "channels_last"), (torch.float32, "")]:
        x, logits = make_inputs(2, 2, 4, 3, 3, dtype, device, layout or "contiguous")
        samples.append((x.requires_grad_(), logits.requires_grad_()))
    x0, _ = make_inputs(0, 2, 4, 3, 3, torch.float32, device)
    for x, logits in samples:
        torch.library.opcheck(torch.ops.resnest_cuda.split_attention_pool.default, (x, 2))
        torch.library.opcheck(torch.ops.resnest_cuda.split_attention_combine.default, (x, logits, 2, 2))
        gap = torch.randn(x.shape[0], 4, dtype=x.dtype, device=device)
        torch.library.opcheck(torch.ops.resnest_cuda.split_attention_pool_backward.default, (gap, 2, 3, 3))
        grad_out = torch.randn(x.shape[0], 4, 3, 3, dtype=x.dtype, device=device)
        torch.library.opcheck(
            torch.ops.resnest_cuda.split_attention_combine_backward.default,
            (grad_out, x.detach(), logits.detach(), 2, 2),
        )
    torch.library.opcheck(torch.ops.resnest_cuda.split_attention_pool.default, (x0, 2))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def tail(x, w1, w2):
        gap = resnest_cuda.split_attention_pool(x, 2)
        logits = torch.relu(gap @ w1) @ w2
        return resnest_cuda.split_attention_combine(x, logits, 2, 1)

    compiled = torch.compile(tail, fullgraph=True, backend="aot_eager")
    x, _ = make_inputs(2, 2, 8, 5, 5, torch.float32, "cpu")
    w1 = torch.randn(8, 32, requires_grad=True)
    w2 = torch.randn(32, 16, requires_grad=True)
    x.requires_grad_()
    out = compiled(x, w1, w2)
    expected = tail(x, w1, w2)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.sum(), [x, w1, w2])
    expected_grads = torch.autograd.grad(expected.sum(), [x, w1, w2])
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


def test_torch_compile_inductor():
    """The default backend (inductor) compiles the surrounding graph, forward and backward, around our kernels."""
    torch._dynamo.reset()

    def fn(x, lg):
        gap = resnest_cuda.split_attention_pool(x * 2, 2)
        return resnest_cuda.split_attention_combine(x * 2, lg, 2, 1) + gap[:, :, None, None]

    def fn_ref(x, lg):
        gap = ref.split_attention_pool(x * 2, 2)
        return ref.split_attention_combine(x * 2, lg, 2, 1) + gap[:, :, None, None]

    x, logits = make_inputs(2, 2, 8, 4, 4, torch.float32, "cpu")
    x.requires_grad_()
    logits.requires_grad_()
    out = torch.compile(fn, fullgraph=True)(x, logits)
    expected = fn_ref(x, logits)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, logits], grad)
    want = torch.autograd.grad(expected, [x, logits], grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", devices())
def test_pool_alone_gradient(device):
    """The pool gradient is a broadcast view; it must still be a correct gradient when pool is used alone."""
    x, _ = make_inputs(2, 2, 4, 3, 5, torch.float64, device, "channels_last")
    x.requires_grad_()
    resnest_cuda.split_attention_pool(x, 2).pow(2).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    ref.split_attention_pool(x_ref, 2).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu_on_detection_shapes(dtype):
    """Large maps take the multi-block reduction paths of the CUDA kernels."""
    for layout in ["contiguous", "channels_last"]:
        x, logits = make_inputs(2, 2, 64, 100, 152, dtype, "cuda", layout)
        _run_and_compare(x, logits, 2, 1, dtype)
        x, logits = make_inputs(8, 2, 1024, 7, 7, dtype, "cuda", layout)
        _run_and_compare(x, logits, 2, 1, dtype)


BAD_INPUTS = [
    # (description, callable, exception type, message fragment)
    ("rank", lambda: resnest_cuda.split_attention_pool(torch.randn(2, 4, 3), 2), ValueError, "4-D"),
    ("radix divides", lambda: resnest_cuda.split_attention_pool(torch.randn(2, 5, 3, 3), 2), ValueError, "radix"),
    ("radix >= 1", lambda: resnest_cuda.split_attention_pool(torch.randn(2, 4, 3, 3), 0), ValueError, "radix"),
    ("int dtype", lambda: resnest_cuda.split_attention_pool(torch.ones(2, 4, 3, 3, dtype=torch.int32), 2),
     TypeError, "x must be float"),
    ("not a tensor", lambda: resnest_cuda.split_attention_pool([1.0], 2), TypeError, "x must be a torch.Tensor"),
    ("logits size", lambda: resnest_cuda.split_attention_combine(torch.randn(2, 8, 3, 3), torch.randn(2, 6), 2, 1),
     ValueError, r"logits must have shape \[2, 8\]"),
    ("logits batch", lambda: resnest_cuda.split_attention_combine(torch.randn(2, 8, 3, 3), torch.randn(3, 8), 2, 1),
     ValueError, "logits"),
    ("logits map", lambda: resnest_cuda.split_attention_combine(torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3), 2),
     ValueError, "logits"),
    ("cardinality divides", lambda: resnest_cuda.split_attention_combine(torch.randn(2, 6, 3, 3), torch.randn(2, 6),
                                                                        2, 2), ValueError, "cardinality"),
    ("cardinality >= 1", lambda: resnest_cuda.split_attention_combine(torch.randn(2, 8, 3, 3), torch.randn(2, 8),
                                                                     2, 0), ValueError, "cardinality"),
    ("dtype mismatch", lambda: resnest_cuda.split_attention_combine(torch.randn(2, 8, 3, 3),
                                                                   torch.randn(2, 8, dtype=torch.float64), 2),
     TypeError, "logits dtype"),
    ("empty map", lambda: resnest_cuda.split_attention_pool(torch.randn(2, 4, 0, 3), 2), ValueError, "H >= 1"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input(case):
    _, fn, exc, match = case
    with pytest.raises(exc, match=match):
        fn()


def test_raw_op_checks_in_cpp():
    """Calling the registered op directly raises the same errors as the wrapper (the checks live in the op)."""
    with pytest.raises(ValueError, match="divisible by radix"):
        torch.ops.resnest_cuda.split_attention_pool(torch.randn(2, 5, 3, 3), 2)
    with pytest.raises(ValueError, match="logits must have shape"):
        torch.ops.resnest_cuda.split_attention_combine(torch.randn(2, 8, 3, 3), torch.randn(2, 7), 2, 1)


@requires_cuda
def test_device_mismatch():
    with pytest.raises(ValueError, match="logits is on"):
        resnest_cuda.split_attention_combine(torch.randn(2, 8, 3, 3, device="cuda"), torch.randn(2, 8), 2)


def _attention_mlp(channels, radix, cardinality, dtype=torch.float64, device="cpu"):
    fc1 = torch.nn.Conv2d(channels, 32, 1, groups=cardinality).to(device, dtype)
    bn1 = torch.nn.BatchNorm2d(32).to(device, dtype)
    fc2 = torch.nn.Conv2d(32, radix * channels, 1, groups=cardinality).to(device, dtype)
    params = list(fc1.parameters()) + list(bn1.parameters()) + list(fc2.parameters())

    def attention(gap):
        return fc2(torch.relu(bn1(fc1(gap.view(gap.shape[0], -1, 1, 1)))))

    return attention, params, bn1


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("radix,cardinality,layout", [(1, 1, "contiguous"), (2, 1, "channels_last"),
                                                       (2, 2, "contiguous"), (4, 2, "channels_last")])
def test_split_attention_single_node_matches_reference(device, radix, cardinality, layout):
    """resnest_cuda.split_attention (one autograd node, grad_x written once) vs the reference tail, forward and
    gradients of x and of the attention MLP's parameters; the norm's running statistics update exactly once."""
    x, _ = make_inputs(3, radix, 8, 5, 6, torch.float64, device, layout)
    x.requires_grad_()
    attention, params, bn1 = _attention_mlp(8, radix, cardinality, device=device)
    out = resnest_cuda.split_attention(x, radix, cardinality, attention, params)
    assert int(bn1.num_batches_tracked) == 1
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x] + params, grad)
    expected = ref.split_attention_combine(x, attention(ref.split_attention_pool(x, radix)), radix, cardinality)
    want = torch.autograd.grad(expected, [x] + params, grad)
    torch.testing.assert_close(out, expected)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    if layout == "channels_last":
        assert got[0].is_contiguous(memory_format=torch.channels_last)


def test_split_attention_without_grad_and_compiled():
    attention, params, _ = _attention_mlp(8, 2, 1, torch.float32)
    x, _ = make_inputs(2, 2, 8, 4, 4, torch.float32, "cpu")
    with torch.no_grad():
        eager = resnest_cuda.split_attention(x, 2, 1, attention, params)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: resnest_cuda.split_attention(x, 2, 1, attention, params), fullgraph=True,
                             backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager)


def test_backward_halves_opcheck_and_match_combined_backward():
    """split_attention_logits_backward + split_attention_input_backward equal the combine backward plus the pool
    gradient; both pass opcheck."""
    for layout in ["contiguous", "channels_last"]:
        x, logits = make_inputs(2, 2, 4, 3, 5, torch.float64, "cpu", layout)
        grad_out = torch.randn(2, 4, 3, 5, dtype=torch.float64)
        grad_gap = torch.randn(2, 4, dtype=torch.float64)
        ops = torch.ops.resnest_cuda
        dx, dl = ops.split_attention_combine_backward(grad_out, x, logits, 2, 2)
        torch.testing.assert_close(ops.split_attention_logits_backward(grad_out, x, logits, 2, 2), dl)
        dx_total = ops.split_attention_input_backward(grad_out, logits, grad_gap, 2, 2)
        torch.testing.assert_close(dx_total, dx + ops.split_attention_pool_backward(grad_gap, 2, 3, 5))
        torch.library.opcheck(ops.split_attention_logits_backward.default, (grad_out, x, logits, 2, 2))
        torch.library.opcheck(ops.split_attention_input_backward.default, (grad_out, logits, grad_gap, 2, 2))
    with pytest.raises(ValueError, match="grad_gap must have shape"):
        ops.split_attention_input_backward(grad_out, logits, torch.randn(3, 4, dtype=torch.float64), 2, 2)


@requires_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_single_node_tail_on_detection_shapes(layout):
    for shape in [(2, 2, 64, 100, 152), (8, 2, 512, 7, 7)]:
        b, r, c, h, w = shape
        x, _ = make_inputs(b, r, c, h, w, torch.float32, "cuda", layout)
        x.requires_grad_()
        attention, params, _ = _attention_mlp(c, r, 1, torch.float32, "cuda")
        out = resnest_cuda.split_attention(x, r, 1, attention, params)
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, [x], grad)[0]
        x64 = x.detach().double().requires_grad_()
        params64 = [p.detach().double() for p in params]
        fc1w, fc1b, bnw, bnb, fc2w, fc2b = params64
        gap = ref.split_attention_pool(x64, r)
        z = torch.nn.functional.conv2d(gap[:, :, None, None], fc1w, fc1b)
        z = torch.relu(torch.nn.functional.batch_norm(z, None, None, bnw, bnb, training=True))
        logits = torch.nn.functional.conv2d(z, fc2w, fc2b)
        expected = ref.split_attention_combine(x64, logits, r, 1)
        torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)
        want = torch.autograd.grad(expected, [x64], grad.double())[0]
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-3)
