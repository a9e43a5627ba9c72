"""The kernel paths a first GPU run must exercise, on every device (CUDA cases skip without a GPU).

Each CUDA kernel picks a path from the input: 16-byte vector loads when the pointers are aligned and, for
channels_last, C is a multiple of the vector width (fp64 2, fp32 4, fp16/bf16 8), for NCHW C*H*W is (rows with a
scalar head and tail around the vectors; the pool needs only aligned pointers); scalar loads otherwise; a warp
per row for short NCHW rows, several blocks per row (split reductions finished by a second kernel) for long
ones. The tests here pick inputs that force each path and compare with the fp64 reference
(`resnest_cuda.reference`) on the CPU. Shapes are small on the CPU and the real detection shapes on CUDA.
"""

import copy

import pytest
import torch

import resnest_cuda
from resnest_cuda import reference as ref

from .helpers import devices
from .tolerances import REL_TOL, assert_matches_reference

# Split-attention inputs of ResNeSt-50 at a 2 x 800x1216 detection batch (B, R, C, H, W), and CPU stand-ins
# (also above the 2048-pixel row length that switches the CUDA NCHW reduction to split blocks).
DETECTION_SHAPES = {
    "cuda": [(2, 2, 64, 200, 304), (2, 2, 128, 100, 152), (2, 2, 256, 50, 76), (2, 2, 512, 25, 38)],
    "cpu": [(2, 2, 16, 50, 76), (2, 2, 32, 25, 38)],
}


def shapes_for(device: str):
    return DETECTION_SHAPES[torch.device(device).type]


def random_x(b, r, c, h, w, dtype, device, layout="nchw", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, r * c, h, w, generator=g, dtype=torch.float64).to(device, dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def offset_copy(t: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    """A copy of `t` (NCHW or channels_last strides) whose data starts one element into its storage, so its data
    pointer is not 16-byte aligned and the kernels must take their scalar paths."""
    base = torch.zeros(t.numel() + 1, dtype=t.dtype, device=t.device)
    if memory_format == torch.channels_last:
        n, c, h, w = t.shape
        view = base[1:].as_strided(t.shape, (h * w * c, 1, w * c, c))
    else:
        view = base[1:].view(t.shape)
    view.copy_(t)
    assert view.data_ptr() % 16 != 0
    return view


def linear_attention(channels: int, radix: int, device, dtype=torch.float32, seed=0):
    """A differentiable attention gap [B, C] -> logits [B, R*C]: a weight in fp32 (fp64 for fp64 inputs), logits
    in gap's dtype, as autocast runs fc1/fc2 around the bf16 kernels."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(channels, radix * channels, generator=g, dtype=torch.float64) / channels**0.5
    weight = weight.to(device, torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_()

    def attention(gap):
        return (gap.to(weight.dtype) @ weight).to(gap.dtype)

    return attention, weight


def check_two_ops(x, logits, radix, cardinality, grad_seed=1):
    """pool and combine (separate autograd nodes: the combine_backward kernel) against the fp64 reference."""
    x = x.detach().requires_grad_()
    logits = logits.detach().requires_grad_()
    gap = resnest_cuda.split_attention_pool(x, radix)
    out = resnest_cuda.split_attention_combine(x, logits, radix, cardinality)
    assert out.is_contiguous(memory_format=_format(x))
    g = torch.Generator().manual_seed(grad_seed)
    grad_gap = torch.randn(gap.shape, generator=g, dtype=torch.float64)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    x64 = x.detach().cpu().double().requires_grad_()
    l64 = logits.detach().cpu().double().requires_grad_()
    ref_gap = ref.split_attention_pool(x64, radix)
    ref_out = ref.split_attention_combine(x64, l64, radix, cardinality)
    assert_matches_reference(gap, ref_gap, name="gap")
    assert_matches_reference(out, ref_out, name="out")
    grads = torch.autograd.grad([gap, out], [x, logits],
                                [grad_gap.to(gap), grad_out.to(out).contiguous(memory_format=_format(out))])
    ref_grads = torch.autograd.grad([ref_gap, ref_out], [x64, l64],
                                    [grad_gap.to(gap).cpu().double(), grad_out.to(out).cpu().double()])
    assert_matches_reference(grads[0], ref_grads[0], name="grad_x")
    assert_matches_reference(grads[1], ref_grads[1], tol=2 * REL_TOL[x.dtype], name="grad_logits")


def check_single_node(x, radix, cardinality, grad_seed=2):
    """split_attention (one autograd node: logits_backward + input_backward kernels) against the fp64 reference,
    including the gradient of the attention's parameter."""
    channels = x.shape[1] // radix
    attention, weight = linear_attention(channels, radix, x.device, x.dtype)
    x = x.detach().requires_grad_()
    out = resnest_cuda.split_attention(x, radix, cardinality, attention, [weight])
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    gx, gw = torch.autograd.grad(out, [x, weight], grad_out.to(out))
    x64 = x.detach().cpu().double().requires_grad_()
    w64 = weight.detach().cpu().double().requires_grad_()
    ref_out = ref.split_attention_combine(x64, ref.split_attention_pool(x64, radix) @ w64, radix, cardinality)
    ref_gx, ref_gw = torch.autograd.grad(ref_out, [x64, w64], grad_out.to(out).cpu().double())
    low = x.dtype in (torch.float16, torch.bfloat16)
    assert_matches_reference(out, ref_out, tol=2 * REL_TOL[x.dtype] if low else None, name="out")
    assert_matches_reference(gx, ref_gx, tol=2 * REL_TOL[x.dtype] if low else None, name="grad_x")
    assert_matches_reference(gw, ref_gw, tol=2 * REL_TOL[x.dtype], name="grad_weight")


def _format(t):
    """The ops' output layout rule: channels_last when the input is channels_last and not also NCHW-contiguous."""
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def random_logits(b, r, c, dtype, device, seed=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, r * c, generator=g, dtype=torch.float64) * 2).to(device, dtype)


# --------------------------------------------------------------------------------------------------------------
# Split attention: vector widths, alignment, long rows


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype,channels", [(torch.float32, 6), (torch.float16, 12), (torch.bfloat16, 20),
                                            (torch.float64, 3)])
@pytest.mark.parametrize("hw", [(5, 7), (48, 50)])
def test_channels_last_channels_not_multiple_of_vector_width(device, dtype, channels, hw):
    for radix, cardinality in [(1, 1), (2, 1), (4, 2 if channels % 2 == 0 else 3)]:
        x = random_x(2, radix, channels, *hw, dtype, device, "channels_last", seed=radix)
        logits = random_logits(2, radix, channels, dtype, device)
        check_two_ops(x, logits, radix, cardinality)
        check_single_node(x, radix, cardinality)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
# H*W % 8 == 0 (vector rows), the last one not (rows with a scalar head and tail)
@pytest.mark.parametrize("hw", [(4, 6), (16, 16), (48, 64), (4, 5)])
def test_half_precision_nchw_vector_rows(device, dtype, hw):
    for radix, cardinality in [(2, 1), (4, 2)]:
        x = random_x(2, radix, 8, *hw, dtype, device, seed=hw[0])
        logits = random_logits(2, radix, 8, dtype, device)
        check_two_ops(x, logits, radix, cardinality)
        check_single_node(x, radix, cardinality)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
# H*W a multiple of 8, even but not a multiple of 8, odd, odd and long (rows over several blocks), 1x1
@pytest.mark.parametrize("hw", [(4, 6), (3, 6), (5, 7), (61, 67), (1, 1)])
def test_elementwise_rows_with_scalar_head_and_tail(device, dtype, layout, hw):
    """NCHW rows are vectorised with a scalar head and tail when C*H*W is a multiple of the vector width (C = 16),
    scalar otherwise (C = 12 with an odd H*W in half precision); channels_last is vectorised when C is a multiple
    of the width. Softmax (R = 2, 4) and sigmoid (R = 1) weights, cardinality 1 and > 1."""
    for channels in (16, 12):
        for radix, cardinality in [(1, 1), (2, 1), (2, 2), (4, 2)]:
            x = random_x(2, radix, channels, *hw, dtype, device, layout, seed=radix + channels)
            logits = random_logits(2, radix, channels, dtype, device, seed=cardinality)
            check_two_ops(x, logits, radix, cardinality)
            check_single_node(x, radix, cardinality)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_misaligned_storage_offset(device, dtype, layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for h, w in [(8, 8), (48, 48)]:
        x = offset_copy(random_x(2, 2, 16, h, w, dtype, device, layout), fmt)
        logits = offset_copy(random_logits(2, 2, 16, dtype, device))
        check_two_ops(x, logits, 2, 1)
        check_single_node(x, 2, 1)


@pytest.mark.parametrize("device", devices())
def test_misaligned_grad_out(device):
    x = random_x(2, 2, 16, 8, 8, torch.float32, device).requires_grad_()
    logits = random_logits(2, 2, 16, torch.float32, device).requires_grad_()
    out = resnest_cuda.split_attention_combine(x, logits, 2, 1)
    grad = torch.randn(out.shape, dtype=torch.float64).to(device, torch.float32)
    got = torch.autograd.grad(out, [x, logits], offset_copy(grad), retain_graph=True)
    want = torch.autograd.grad(out, [x, logits], grad.clone())
    for a, b in zip(got, want):
        assert_matches_reference(a, b.double())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_split_reductions_on_long_rows(device, dtype, layout):
    """Few channels and long rows: the reductions are split over several blocks on CUDA."""
    # the last with an odd H*W: the split rows have a scalar head and tail
    for b, r, c, h, w in [(1, 2, 4, 96, 100), (2, 1, 2, 64, 129), (1, 2, 4, 97, 101)]:
        x = random_x(b, r, c, h, w, dtype, device, layout)
        check_two_ops(x, random_logits(b, r, c, dtype, device), r, 1)
        check_single_node(x, r, 1)


# --------------------------------------------------------------------------------------------------------------
# The fused tail of SplitAttentionConv2d: parameter gradients at the detection shapes


def attention_mlp(channels: int, radix: int, device):
    inter = max(channels * radix // 4, 32)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Conv2d(channels, inter, 1), torch.nn.BatchNorm2d(inter),
                              torch.nn.ReLU(), torch.nn.Conv2d(inter, radix * channels, 1))
    with torch.no_grad():
        mlp[1].weight.uniform_(0.5, 1.5)
        mlp[1].bias.uniform_(-0.2, 0.2)
    return mlp.to(device).train()


def rounded_like(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t` rounded to `dtype` in the forward pass, identity in the backward pass (fp64 result)."""
    return t + (t.to(dtype).double() - t).detach()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_fused_tail_parameter_gradients_at_detection_shapes(device, dtype, layout):
    """fc1, bn1 and fc2 gradients of the single-node tail (not only grad_x), as SplitAttentionConv2d uses it."""
    for b, r, c, h, w in shapes_for(device):
        x = random_x(b, r, c, h, w, dtype, device, layout).requires_grad_()
        mlp = attention_mlp(c, r, device)
        mlp64 = copy.deepcopy(mlp).double()  # the fp64 reference runs on the same device (plain PyTorch ops)
        params = list(mlp.parameters())

        def attention(gap, mlp=mlp):
            return mlp(gap.float()[:, :, None, None]).to(gap.dtype)

        out = resnest_cuda.split_attention(x, r, 1, attention, params)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        got = torch.autograd.grad(out, [x, *params], grad_out.to(out))
        x64 = x.detach().double().requires_grad_()
        # The reference rounds where the ops' contract rounds: the pooled gap and the logits are in x's dtype.
        gap = rounded_like(ref.split_attention_pool(x64, r), dtype)
        logits = rounded_like(mlp64(gap[:, :, None, None]), dtype)
        ref_out = ref.split_attention_combine(x64, logits, r, 1)
        want = torch.autograd.grad(ref_out, [x64, *mlp64.parameters()], grad_out.to(out).double())
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        assert_matches_reference(out, ref_out, tol=tol, name="out")
        names = ["grad_x"] + [f"grad {n}" for n, _ in mlp.named_parameters()]
        for name, a, e in zip(names, got, want):
            if name == "grad 0.bias":  # fc1's bias: exactly 0 (bn1 subtracts the batch mean), only round-off
                assert a.abs().max() <= tol * got[1].abs().max(), f"{name} is not ~0"
                continue
            assert_matches_reference(a, e, tol=tol, name=f"{(b, r, c, h, w)} {name}")


# --------------------------------------------------------------------------------------------------------------
# fp64 kernels, empty inputs, determinism


def roi_inputs(device, dtype, num_rois=60, channels=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, 13, 17, generator=g, dtype=torch.float64)
    xy = torch.rand(num_rois, 2, generator=g, dtype=torch.float64) * torch.tensor([68.0, 52.0]) - 4
    wh = 1 + torch.rand(num_rois, 2, generator=g, dtype=torch.float64) * 40
    idx = torch.randint(0, 2, (num_rois, 1), generator=g).double()
    rois = torch.cat([idx, xy, xy + wh], dim=1)
    return x.to(device, dtype), rois.to(device, dtype)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "offset"])
def test_roi_align_fp64_matches_reference(device, layout):
    x, rois = roi_inputs(device, torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "offset":
        x = offset_copy(x)
    x.requires_grad_()
    for sampling_ratio, aligned in [(0, True), (2, False)]:
        out = resnest_cuda.roi_align(x, rois, 7, 0.25, sampling_ratio, aligned)
        x64 = x.detach().cpu().requires_grad_()
        want = ref.roi_align(x64, rois.cpu(), 7, 0.25, sampling_ratio, aligned)
        assert_matches_reference(out, want, name="roi_align")
        grad = torch.randn(out.shape, dtype=torch.float64)
        (gx,) = torch.autograd.grad(out, x, grad.to(out.device))
        (want_gx,) = torch.autograd.grad(want, x64, grad)
        assert_matches_reference(gx, want_gx, name="roi_align grad")


@pytest.mark.parametrize("device", devices())
def test_nms_fp64_matches_reference(device):
    boxes, scores = proposal_boxes(600, seed=1)
    boxes, scores = boxes.double(), scores.double()
    for thr in (0.3, 0.7):
        keep = resnest_cuda.nms(boxes.to(device), scores.to(device), thr)
        assert keep.device.type == torch.device(device).type
        assert torch.equal(keep.cpu(), ref.nms(boxes, scores, thr))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_empty_batch_and_zero_channels_on_every_op(device, dtype):
    for shape in [(0, 8, 5, 5), (2, 0, 5, 5)]:  # empty batch; C = 0
        for layout in ["nchw", "channels_last"]:
            x = torch.randn(shape, device=device, dtype=dtype)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_()
            logits = torch.randn(shape[0], shape[1], device=device, dtype=dtype, requires_grad=True)
            gap = resnest_cuda.split_attention_pool(x, 2)
            out = resnest_cuda.split_attention_combine(x, logits, 2, 1)
            assert gap.shape == (shape[0], shape[1] // 2) and out.shape == (shape[0], shape[1] // 2, 5, 5)
            gx, gl = torch.autograd.grad((gap.sum() + out.sum()), [x, logits])
            assert gx.shape == x.shape and gl.shape == logits.shape
            attention, weight = linear_attention(shape[1] // 2, 2, device, dtype)
            tail = resnest_cuda.split_attention(x, 2, 1, attention, [weight])
            gx, gw = torch.autograd.grad(tail.sum(), [x, weight], allow_unused=True)
            assert tail.shape == out.shape and gx.shape == x.shape
            assert gw is None or torch.count_nonzero(gw) == 0
    feats = torch.randn(2, 4, 6, 6, device=device, dtype=dtype, requires_grad=True)
    no_rois = torch.zeros(0, 5, device=device, dtype=dtype)
    pooled = resnest_cuda.roi_align(feats, no_rois, 3)
    assert pooled.shape == (0, 4, 3, 3)
    assert torch.count_nonzero(torch.autograd.grad(pooled.sum(), feats)[0]) == 0
    one_roi = torch.tensor([[0.0, 1, 1, 4, 4]], device=device, dtype=dtype)
    for empty in [torch.randn(2, 0, 6, 6, device=device, dtype=dtype), torch.randn(0, 4, 6, 6, device=device,
                                                                                   dtype=dtype)]:
        empty.requires_grad_()
        rois = one_roi if empty.shape[0] else no_rois
        pooled = resnest_cuda.roi_align(empty, rois, 3)
        assert pooled.shape == (rois.shape[0], empty.shape[1], 3, 3)
        assert torch.autograd.grad(pooled.sum(), empty)[0].shape == empty.shape
    no_boxes, no_scores = torch.zeros(0, 4, device=device, dtype=dtype), torch.zeros(0, device=device, dtype=dtype)
    for keep in [resnest_cuda.nms(no_boxes, no_scores, 0.5),
                 resnest_cuda.batched_nms(no_boxes, no_scores, torch.zeros(0, dtype=torch.long, device=device), 0.5)]:
        assert keep.shape == (0,) and keep.dtype == torch.int64 and keep.device == no_boxes.device


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_reductions_are_bitwise_deterministic(device, dtype, layout):
    """Split reductions finish in a fixed order (no atomics): two runs give identical bits."""
    b, r, c, h, w = shapes_for(device)[0]
    x = random_x(b, r, c, h, w, dtype, device, layout).requires_grad_()
    logits = random_logits(b, r, c, dtype, device).requires_grad_()
    attention, weight = linear_attention(c, r, device, dtype)
    grad_out = torch.randn(b, c, h, w, dtype=torch.float64).to(device, dtype).contiguous(
        memory_format=_format(x))
    grad_gap = torch.randn(b, c, dtype=torch.float64).to(device, dtype)

    def run():
        gap = resnest_cuda.split_attention_pool(x, r)
        out = resnest_cuda.split_attention_combine(x, logits, r, 1)
        grads = torch.autograd.grad([gap, out], [x, logits], [grad_gap, grad_out])
        tail = resnest_cuda.split_attention(x, r, 1, attention, [weight])
        tail_grads = torch.autograd.grad(tail, [x, weight], grad_out)
        return [gap, out, *grads, tail, *tail_grads]

    first, second = run(), run()
    for i, (a, b_) in enumerate(zip(first, second)):
        assert torch.equal(a, b_), f"output {i} differs between two runs"


# --------------------------------------------------------------------------------------------------------------
# NMS above the CUDA kernel's single-word sizes


def proposal_boxes(n: int, seed: int, image=(800.0, 1216.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposal-like boxes clustered around n/20 objects in an 800x1216 image, distinct random scores."""
    g = torch.Generator().manual_seed(seed)
    h, w = image
    centres = torch.rand(max(1, n // 20), 2, generator=g) * torch.tensor([w, h])
    sizes = torch.exp(torch.empty(len(centres), 2).uniform_(2.5, 6.0, generator=g))
    pick = torch.randint(0, len(centres), (n,), generator=g)
    xy = centres[pick] + torch.randn(n, 2, generator=g) * sizes[pick] * 0.15
    wh = sizes[pick] * (0.8 + 0.4 * torch.rand(n, 2, generator=g))
    return torch.cat([xy - wh / 2, xy + wh / 2], dim=1), torch.rand(n, generator=g)


@pytest.mark.parametrize("device", devices())
def test_nms_many_boxes(device):
    """10k and 80k boxes on CUDA (the keep kernel walks more than 128 mask words per thread block; 80k is the
    class-wise NMS of 1000 proposals x 80 classes at a score threshold of 0) against the CPU kernel; on the CPU the
    kernel against the reference at a size the reference loop can do quickly."""
    on_cuda = torch.device(device).type == "cuda"
    for n in (10_000, 80_000) if on_cuda else (1500,):
        boxes, scores = proposal_boxes(n, seed=n)
        idxs = torch.randint(0, 80, (n,), generator=torch.Generator().manual_seed(n))
        for thr in (0.5, 0.7):
            keep = resnest_cuda.nms(boxes.to(device), scores.to(device), thr).cpu()
            want = resnest_cuda.nms(boxes, scores, thr) if on_cuda else ref.nms(boxes, scores, thr)
            assert 0 < len(keep) < n and torch.equal(keep, want)
        keep = resnest_cuda.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5).cpu()
        want = (resnest_cuda.batched_nms(boxes, scores, idxs, 0.5) if on_cuda
                else ref.batched_nms(boxes, scores, idxs, 0.5))
        assert torch.equal(keep, want)


# --------------------------------------------------------------------------------------------------------------
# RoIAlign above the CUDA launch's 65535 x 256 outputs (grid-stride loops)


@pytest.mark.parametrize("device", devices())
def test_roi_align_many_outputs(device):
    """On CUDA more outputs than one grid covers (16.7M at 65535 blocks of 256), forward and backward, against the
    CPU kernel; on the CPU a smaller case against the reference."""
    on_cuda = torch.device(device).type == "cuda"
    num_rois, channels = (1400, 256) if on_cuda else (40, 16)  # 1400 * 256 * 49 = 17.6M outputs
    x, rois = roi_inputs("cpu", torch.float32, num_rois=num_rois, channels=channels, seed=5)
    x.requires_grad_()
    xd = x.detach().to(device).requires_grad_()
    out = resnest_cuda.roi_align(xd, rois.to(device), 7, 0.25, 2, True)
    want = (resnest_cuda.roi_align if on_cuda else ref.roi_align)(x, rois, 7, 0.25, 2, True)
    assert_matches_reference(out, want.double(), tol=1e-5, name="roi_align")
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(6))
    (gx,) = torch.autograd.grad(out, xd, grad.to(device))
    (want_gx,) = torch.autograd.grad(want, x, grad)
    assert_matches_reference(gx, want_gx.double(), tol=1e-5, name="roi_align grad")
