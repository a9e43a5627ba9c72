"""One test per row of the README table "What the ops accept and refuse" (the row names must match), on every
device (CUDA cases skip without a GPU). The detailed contract tests are in tests/test_op_contracts_*.py."""

import math
import pathlib
import re
import warnings

import pytest
import torch

import resnest_cuda
from resnest_cuda import SplitAttentionConv2d, reference
from tests.helpers import requires_cuda

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]
OPS = torch.ops.resnest_cuda
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_rows() -> list[str]:
    text = README.read_text()
    table = text[text.index("<!-- op-table:start -->") : text.index("<!-- op-table:end -->")]
    return re.findall(r"^\| `([a-z-]+)` \|", table, flags=re.M)


def test_every_row_has_a_test():
    rows = readme_rows()
    assert len(rows) >= 15
    tests = {name for name in globals() if name.startswith("test_row_")}
    assert {"test_row_" + r.replace("-", "_") for r in rows} == tests


def rand(*shape, device="cpu", dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


ROIS = [[0.0, 0.5, 1.0, 4.0, 5.5], [1.0, 2.0, 0.0, 6.0, 3.0]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_row_dtypes(device, dtype):
    x, logits = rand(2, 8, 3, 4, device=device, dtype=dtype), rand(2, 8, device=device, dtype=dtype, seed=1)
    x64, l64 = x.double(), logits.double()
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(dtype, 1e-5)
    out = resnest_cuda.split_attention_combine(x, logits, 2, 2)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), reference.split_attention_combine(x64, l64, 2, 2), rtol=tol, atol=tol)
    feats, rois = rand(2, 3, 7, 8, device=device, dtype=dtype), torch.tensor(ROIS, device=device, dtype=dtype)
    pooled = resnest_cuda.roi_align(feats, rois, 2)
    assert pooled.dtype == dtype
    expected = reference.roi_align(feats.double(), rois.double(), 2)
    torch.testing.assert_close(pooled.double(), expected, rtol=4 * tol, atol=4 * tol)


def test_row_int_dtype():
    with pytest.raises(TypeError, match="split_attention_pool: x must be float32/float16/bfloat16/float64"):
        resnest_cuda.split_attention_pool(torch.ones(2, 4, 3, 3, dtype=torch.int64), 2)
    with pytest.raises(TypeError, match=r"logits dtype \(Float\) must match x dtype \(Double\)"):
        resnest_cuda.split_attention_combine(rand(2, 4, 3, 3), rand(2, 4).float(), 2)
    with pytest.raises(TypeError, match="roi_align: input must be float32"):
        resnest_cuda.roi_align(torch.ones(1, 2, 4, 4, dtype=torch.bool), torch.tensor(ROIS[:1]), 2)


def test_row_bad_shape():
    with pytest.raises(ValueError, match=r"logits must have shape \[2, 4\] or \[2, 4, 1, 1\]"):
        resnest_cuda.split_attention_combine(rand(2, 4, 3, 3), rand(2, 4, 2, 2), 2)
    with pytest.raises(ValueError, match=r"x must be a 4-D tensor \[B, radix\*C, H, W\]"):
        resnest_cuda.split_attention_combine(rand(4, 3, 3), rand(2, 4), 2)
    with pytest.raises(ValueError, match=r"rois must have shape \[K, 5\]"):
        resnest_cuda.roi_align(rand(1, 2, 4, 4), rand(3, 4), 2)
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\]"):
        resnest_cuda.nms(rand(3, 5), rand(3), 0.5)
    with pytest.raises(ValueError, match=r"scores must have shape \[3\] \(one per box\)"):
        torch.ops.resnest_cuda.nms_fixed(rand(3, 4), rand(3, 1), 0.5, 2)


def test_row_bad_value():
    with pytest.raises(ValueError, match="cardinality must be an int >= 1, got 0"):
        resnest_cuda.split_attention_combine(rand(2, 4, 3, 3), rand(2, 4), 2, 0)
    with pytest.raises(ValueError, match=r"x.shape\[1\] \(6\) must be divisible by radix \(4\)"):
        resnest_cuda.split_attention_pool(rand(2, 6, 3, 3), 4)
    with pytest.raises(ValueError, match=r"output_size must be positive, got \(2, 0\)"):
        resnest_cuda.roi_align(rand(1, 2, 4, 4), torch.tensor(ROIS[:1]), (2, 0))
    with pytest.raises(ValueError, match=r"max_keep must be >= 0 \(or -1 for no limit\), got -2"):
        torch.ops.resnest_cuda.nms(rand(3, 4), rand(3), 0.5, -2)


@pytest.mark.parametrize("device", ["meta", pytest.param("cuda", marks=requires_cuda)])
def test_row_device_mismatch(device):
    with pytest.raises(ValueError, match=f"logits is on {device}.* but x is on cpu"):
        resnest_cuda.split_attention_combine(rand(2, 4, 3, 3), rand(2, 4).to(device), 2)
    with pytest.raises(ValueError, match=f"rois is on {device}.* but input is on cpu"):
        resnest_cuda.roi_align(rand(1, 2, 4, 4), torch.tensor(ROIS[:1]).to(device), 2)


def test_row_same_error():
    bad = rand(2, 5, 3, 3)
    errors = []
    for call in (lambda: resnest_cuda.split_attention_pool(bad, 2), lambda: OPS.split_attention_pool(bad, 2)):
        with pytest.raises(ValueError) as e:
            call()
        errors.append(str(e.value))
    torch._dynamo.reset()
    with pytest.raises(RuntimeError) as compiled:
        torch.compile(lambda t: resnest_cuda.split_attention_pool(t, 2), backend="eager", fullgraph=True)(bad)
    assert errors[0] == errors[1] and f"ValueError({errors[0]!r})" in str(compiled.value)


@pytest.mark.parametrize("device", DEVICES)
def test_row_empty(device):
    x = rand(3, 0, 2, 2, device=device).requires_grad_()
    out = resnest_cuda.split_attention_combine(x, rand(3, 0, device=device), 2)
    assert out.shape == (3, 0, 2, 2) and torch.autograd.grad(out.sum(), x)[0].shape == x.shape
    feats = rand(2, 3, 0, 4, device=device).requires_grad_()
    pooled = resnest_cuda.roi_align(feats, torch.tensor(ROIS, device=device), 2)
    assert pooled.shape == (2, 3, 2, 2) and torch.count_nonzero(pooled) == 0
    assert resnest_cuda.nms(rand(0, 4, device=device), rand(0, device=device), 0.5).shape == (0,)


def test_row_empty_map():
    with pytest.raises(ValueError, match="x must have H >= 1 and W >= 1"):
        resnest_cuda.split_attention_pool(rand(2, 4, 3, 0), 2)


@pytest.mark.parametrize("device", DEVICES)
def test_row_layouts(device):
    x = rand(2, 8, 3, 5, device=device).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = resnest_cuda.split_attention_combine(x, rand(2, 8, device=device), 2, 2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    (grad,) = torch.autograd.grad(out, x, rand(*out.shape, device=device, seed=3))  # NCHW incoming gradient
    assert grad.is_contiguous(memory_format=torch.channels_last)
    feats = rand(2, 3, 7, 8, device=device).contiguous(memory_format=torch.channels_last).requires_grad_()
    pooled = resnest_cuda.roi_align(feats, torch.tensor(ROIS, device=device, dtype=torch.float64), 2)
    assert torch.autograd.grad(pooled.sum(), feats)[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
def test_row_non_finite_roi(device):
    rois = torch.tensor([[0.0, math.nan, 0, 4, 4], [0.0, 0, 0, math.inf, 4], ROIS[0]], device=device)
    out = resnest_cuda.roi_align(rand(1, 2, 6, 6, device=device, dtype=torch.float32), rois, 2, 1.0, 0, False)
    assert torch.count_nonzero(out[:2]) == 0 and torch.count_nonzero(out[2]) > 0


@pytest.mark.parametrize("device", DEVICES)
def test_row_huge_roi(device):
    feats = rand(1, 2, 6, 6, device=device)
    roi = torch.tensor([[0.0, 0, 0, 300, 300]], device=device, dtype=torch.float64)
    adaptive = resnest_cuda.roi_align(feats, roi, 2, 1.0, 0)
    torch.testing.assert_close(adaptive, resnest_cuda.roi_align(feats, roi, 2, 1.0, 64))  # capped at 64
    assert torch.count_nonzero(adaptive) > 0


@pytest.mark.parametrize("device", DEVICES)
def test_row_batch_index(device):
    rois = torch.tensor([[5.0, 0, 0, 4, 4], [-1.0, 0, 0, 4, 4], [math.nan, 0, 0, 4, 4], ROIS[0]], device=device)
    feats = rand(1, 2, 6, 6, device=device, dtype=torch.float32).requires_grad_()
    out = resnest_cuda.roi_align(feats, rois, 2)
    assert torch.count_nonzero(out[:3]) == 0 and torch.count_nonzero(out[3]) > 0
    assert torch.count_nonzero(torch.autograd.grad(out[:3].sum(), feats)[0]) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_row_double_backward(device):
    x, logits = rand(2, 4, 2, 3, device=device).requires_grad_(), rand(2, 4, device=device).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, b: resnest_cuda.split_attention_combine(a, b, 2), (x, logits))
    feats = rand(1, 2, 5, 5, device=device).requires_grad_()
    rois = torch.tensor(ROIS[:1], device=device, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda f: resnest_cuda.roi_align(f, rois, 2), (feats,))


@pytest.mark.parametrize("device", DEVICES)
def test_row_backward_ops(device):
    grad = rand(1, 2, 2, 2, device=device).requires_grad_()
    rois = torch.tensor(ROIS[:1], device=device, dtype=torch.float64)
    # roi_align_backward is differentiable (exactly); the split-attention backward kernels refuse.
    assert torch.autograd.gradcheck(lambda g: OPS.roi_align_backward(g, rois, 1.0, 2, 2, 1, 2, 5, 5, 0, True), (grad,))
    out = OPS.split_attention_logits_backward(grad, rand(1, 4, 2, 2, device=device), rand(1, 4, device=device), 2, 1)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        out.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
def test_row_retain_graph(device):
    block = SplitAttentionConv2d(8, 8, radix=2, groups=2).double().to(device)
    x = rand(2, 8, 4, 4, device=device).requires_grad_()
    loss = block(x).square().sum()
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * first)


@pytest.mark.parametrize("device", DEVICES)
def test_row_saved_tensor_hooks(device):
    block = SplitAttentionConv2d(8, 8, radix=2, groups=2).double().to(device)
    x = rand(2, 8, 4, 4, device=device).requires_grad_()
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t.shape) or t.clone(), lambda t: t):
        loss = block(x).square().sum()
    assert (2, 8, 4, 4) in seen
    torch.testing.assert_close(torch.autograd.grad(loss, x)[0], torch.autograd.grad(block(x).square().sum(), x)[0])


def test_row_torch_func():
    with pytest.raises(RuntimeError, match="torch.func transforms .* not supported"):
        torch.func.grad(lambda t: resnest_cuda.split_attention_pool(t, 2).sum())(rand(2, 4, 3, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_row_deterministic(device):
    feats = rand(1, 2, 6, 6, device=device, dtype=torch.float32).requires_grad_()
    out = resnest_cuda.roi_align(feats, torch.tensor(ROIS[:1], device=device), 2)
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        if device == "cpu":  # deterministic: allowed, and bit-identical from run to run
            grads = [torch.autograd.grad(out.sum(), feats, retain_graph=True)[0] for _ in range(2)]
            assert torch.equal(grads[0], grads[1])
            return
        with pytest.raises(RuntimeError, match="roi_align_backward_cuda"):
            out.sum().backward(retain_graph=True)
        torch.use_deterministic_algorithms(True, warn_only=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out.sum().backward()
        assert any("roi_align_backward_cuda" in str(w.message) for w in caught)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_multi_level(device):  # part of the `deterministic` row
    feats = [rand(1, 2, 8 // s, 8 // s, device=device, dtype=torch.float32).requires_grad_() for s in (1, 2)]
    rois = torch.tensor([[0, 0.0, 0, 5, 5], [0, 1, 1, 20, 20]], device=device)  # levels 0 and 1
    out = resnest_cuda.multi_level_roi_align(feats, rois, 2, (4, 8), finest_scale=4.0)
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        if device == "cpu":
            grads = [torch.autograd.grad(out.sum(), feats, retain_graph=True) for _ in range(2)]
            assert all(torch.equal(a, b) for a, b in zip(*grads)) and all(g.abs().sum() > 0 for g in grads[0])
            return
        with pytest.raises(RuntimeError, match="multi_level_roi_align_backward_cuda"):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
