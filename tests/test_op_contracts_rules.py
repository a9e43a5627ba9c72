"""One set of rules for every op: empty shapes return early on every device, and a bad argument raises the same
error (type and message naming the argument and the expected shape) from the Python wrapper, the raw
torch.ops call, and under torch.compile (whose fake tensors run the ops' C++ Meta kernels)."""

import pytest
import torch

import resnest_cuda
from resnest_cuda import reference
from tests.helpers import requires_cuda

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]
OPS = torch.ops.resnest_cuda


def _t(*shape, device="cpu", dtype=torch.float32):
    return torch.randn(*shape, device=device, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch, channels", [(0, 4), (3, 0), (0, 0)], ids=["B=0", "C=0", "B=C=0"])
def test_split_attention_ops_on_empty_shapes(device, batch, channels):
    """Every split-attention op (forward, backward halves, autograd) returns correctly shaped empty results."""
    r, k = 2, 1 if channels == 0 else 2
    x = _t(batch, r * channels, 3, 4, device=device).requires_grad_()
    logits = _t(batch, r * channels, device=device).requires_grad_()
    gap = resnest_cuda.split_attention_pool(x, r)
    out = resnest_cuda.split_attention_combine(x, logits, r, k)
    assert gap.shape == (batch, channels) and out.shape == (batch, channels, 3, 4)
    grad_out = torch.zeros_like(out)
    dx, dl = OPS.split_attention_combine_backward(grad_out, x, logits, r, k)
    assert dx.shape == x.shape and dl.shape == logits.shape
    assert OPS.split_attention_logits_backward(grad_out, x, logits, r, k).shape == logits.shape
    assert OPS.split_attention_input_backward(grad_out, logits, gap, r, k).shape == x.shape
    assert OPS.split_attention_pool_backward(gap, r, 3, 4).shape == x.shape
    gx, gl = torch.autograd.grad((out.sum() + gap.sum()), (x, logits))
    assert gx.shape == x.shape and gl.shape == logits.shape
    w = _t(r * channels, channels, device=device).requires_grad_()
    fused = resnest_cuda.split_attention(x, r, k, lambda g: g @ w.T, [w])
    assert fused.shape == out.shape
    assert torch.autograd.grad(fused.sum(), x)[0].shape == x.shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "n, c, h, w, k", [(2, 3, 5, 5, 0), (2, 0, 5, 5, 3), (0, 3, 5, 5, 0), (2, 3, 0, 5, 3), (2, 3, 5, 0, 3)],
    ids=["K=0", "C=0", "N=0", "H=0", "W=0"],
)
def test_roi_align_on_empty_shapes(device, n, c, h, w, k):
    """Empty results, or zeros when the map is empty (nothing to sample from), forward and backward."""
    x = _t(n, c, h, w, device=device).requires_grad_()
    rois = torch.tensor([[0.0, 0.5, 0.5, 3.0, 3.0]] * k, device=device).reshape(k, 5)
    out = resnest_cuda.roi_align(x, rois, 2)
    assert out.shape == (k, c, 2, 2)
    assert torch.equal(out, torch.zeros_like(out))
    torch.testing.assert_close(out, reference.roi_align(x.detach(), rois, 2))
    (grad,) = torch.autograd.grad(out.sum(), x, allow_unused=True, materialize_grads=True)
    assert grad.shape == x.shape and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_nms_on_empty_boxes(device):
    boxes, scores = _t(0, 4, device=device), _t(0, device=device)
    for keep in [resnest_cuda.nms(boxes, scores, 0.5),
                 resnest_cuda.batched_nms(boxes, scores, torch.zeros(0, dtype=torch.long, device=device), 0.5)]:
        assert keep.shape == (0,) and keep.dtype == torch.long


# (name, wrapper call, raw torch.ops call, error type, message): every path must raise this error.
X, L = _t(2, 8, 3, 3), _t(2, 8)
FEATS, ROIS = _t(1, 2, 6, 6), torch.tensor([[0.0, 0, 0, 3, 3]])
BAD = [
    ("x 3-D", lambda: resnest_cuda.split_attention_pool(_t(8, 3, 3), 2),
     lambda: OPS.split_attention_pool(_t(8, 3, 3), 2), ValueError,
     r"split_attention_pool: x must be a 4-D tensor \[B, radix\*C, H, W\], got shape \[8, 3, 3\]"),
    ("radix divides", lambda: resnest_cuda.split_attention_pool(_t(2, 5, 3, 3), 2),
     lambda: OPS.split_attention_pool(_t(2, 5, 3, 3), 2), ValueError,
     r"x.shape\[1\] \(5\) must be divisible by radix \(2\); expected x of shape \[B, radix\*C, H, W\]"),
    ("radix >= 1", lambda: resnest_cuda.split_attention_pool(X, 0), lambda: OPS.split_attention_pool(X, 0),
     ValueError, "radix must be an int >= 1, got 0"),
    ("int x", lambda: resnest_cuda.split_attention_pool(X.int(), 2), lambda: OPS.split_attention_pool(X.int(), 2),
     TypeError, "x must be float32/float16/bfloat16/float64, got Int"),
    ("empty map", lambda: resnest_cuda.split_attention_pool(_t(2, 8, 0, 3), 2),
     lambda: OPS.split_attention_pool(_t(2, 8, 0, 3), 2), ValueError, "x must have H >= 1 and W >= 1"),
    ("logits shape", lambda: resnest_cuda.split_attention_combine(X, _t(2, 6), 2, 1),
     lambda: OPS.split_attention_combine(X, _t(2, 6), 2, 1), ValueError,
     r"logits must have shape \[2, 8\] or \[2, 8, 1, 1\] \(batch, radix\*C\), got \[2, 6\]"),
    ("logits dtype", lambda: resnest_cuda.split_attention_combine(X, L.double(), 2, 1),
     lambda: OPS.split_attention_combine(X, L.double(), 2, 1), TypeError, r"logits dtype \(Double\) must match x"),
    ("cardinality", lambda: resnest_cuda.split_attention_combine(X, L, 2, 3),
     lambda: OPS.split_attention_combine(X, L, 2, 3), ValueError, r"must be divisible by cardinality \(3\)"),
    ("input 3-D", lambda: resnest_cuda.roi_align(FEATS[0], ROIS, 2),
     lambda: OPS.roi_align(FEATS[0], ROIS, 1.0, 2, 2, 0, True), ValueError,
     r"roi_align: input must be a 4-D tensor \[N, C, H, W\], got shape \[2, 6, 6\]"),
    ("rois shape", lambda: resnest_cuda.roi_align(FEATS, ROIS[:, :4], 2),
     lambda: OPS.roi_align(FEATS, ROIS[:, :4], 1.0, 2, 2, 0, True), ValueError,
     r"rois must have shape \[K, 5\] \(batch_index, x1, y1, x2, y2\), got \[1, 4\]"),
    ("rois dtype", lambda: resnest_cuda.roi_align(FEATS, ROIS.long(), 2),
     lambda: OPS.roi_align(FEATS, ROIS.long(), 1.0, 2, 2, 0, True), TypeError, "rois must be float32/.*got Long"),
    ("output_size", lambda: resnest_cuda.roi_align(FEATS, ROIS, 0),
     lambda: OPS.roi_align(FEATS, ROIS, 1.0, 0, 0, 0, True), ValueError, r"output_size must be positive, got \(0, 0\)"),
    ("spatial_scale", lambda: resnest_cuda.roi_align(FEATS, ROIS, 2, 0.0),
     lambda: OPS.roi_align(FEATS, ROIS, 0.0, 2, 2, 0, True), ValueError, "spatial_scale must be > 0, got 0"),
    ("boxes shape", lambda: resnest_cuda.nms(_t(3, 5), _t(3), 0.5), lambda: OPS.nms(_t(3, 5), _t(3), 0.5),
     ValueError, r"^nms: boxes must have shape \[N, 4\] \(x1, y1, x2, y2\), got shape \[3, 5\]$"),
    ("boxes dtype", lambda: resnest_cuda.nms(_t(3, 4).int(), _t(3), 0.5), lambda: OPS.nms(_t(3, 4).int(), _t(3), 0.5),
     TypeError, r"^nms: boxes must be float32/float16/bfloat16/float64, got Int$"),
    ("scores shape", lambda: resnest_cuda.nms_fixed(_t(3, 4), _t(2), 0.5, 2),
     lambda: OPS.nms_fixed(_t(3, 4), _t(2), 0.5, 2), ValueError,
     r"^nms_fixed: scores must have shape \[3\] \(one per box\), got shape \[2\]$"),
    ("scores dtype", lambda: resnest_cuda.nms(_t(3, 4), _t(3).long(), 0.5),
     lambda: OPS.nms(_t(3, 4), _t(3).long(), 0.5), TypeError,
     r"^nms: scores must be float32/float16/bfloat16/float64, got Long$"),
    ("max_keep", lambda: resnest_cuda.nms(_t(3, 4), _t(3), 0.5, -2), lambda: OPS.nms(_t(3, 4), _t(3), 0.5, -2),
     ValueError, r"^nms: max_keep must be >= 0 \(or -1 for no limit\), got -2$"),
    ("batched boxes shape", lambda: resnest_cuda.batched_nms(_t(3, 5), _t(3), torch.zeros(3, dtype=torch.long), 0.5),
     lambda: OPS._nms_check(_t(3, 5), _t(3), -1, False, "batched_nms"), ValueError,
     r"^batched_nms: boxes must have shape \[N, 4\]"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_same_error_from_wrapper_raw_op_and_compile(case):
    _, wrapper, raw, error, match = case
    with pytest.raises(error, match=match) as from_wrapper:
        wrapper()
    with pytest.raises(error, match=match) as from_raw:
        raw()
    assert str(from_wrapper.value) == str(from_raw.value)
    torch._dynamo.reset()
    # Dynamo reports what the fake tensors' Meta kernel raised as "... got ValueError('<message>')".
    with pytest.raises(RuntimeError) as compiled:
        torch.compile(wrapper, backend="eager", fullgraph=True, dynamic=False)()
    assert repr(from_wrapper.value) in str(compiled.value)


def test_device_mismatch_is_the_same_error_from_wrapper_and_raw_op():
    """Under torch.compile, fake tensors check devices themselves before any kernel runs (PyTorch's own error)."""
    for call in (lambda: resnest_cuda.split_attention_combine(X, L.to("meta"), 2, 1),
                 lambda: OPS.split_attention_combine(X, L.to("meta"), 2, 1)):
        with pytest.raises(ValueError, match="logits is on meta but x is on cpu; both must be on one device"):
            call()
    with pytest.raises(ValueError, match="rois is on meta but input is on cpu"):
        resnest_cuda.roi_align(FEATS, ROIS.to("meta"), 2)


def test_meta_kernels_follow_the_memory_format_rule():
    """Fake/meta outputs have the layout of the real kernels (one rule, in split_attention.h)."""
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = _t(2, 8, 3, 5).contiguous(memory_format=fmt)
        real = OPS.split_attention_combine(x, L, 2, 1)
        meta = OPS.split_attention_combine(x.to("meta"), L.to("meta"), 2, 1)
        assert meta.stride() == real.stride() and meta.shape == real.shape
        real_dx, _ = OPS.split_attention_combine_backward(real, x, L, 2, 1)
        meta_dx, _ = OPS.split_attention_combine_backward(meta, x.to("meta"), L.to("meta"), 2, 1)
        assert meta_dx.stride() == real_dx.stride() == x.stride()
