"""The CUDA kernels, run on the CPU by the emulated-CUDA build (torch.ops.resnest_emu), against the CPU kernels.

Every case reaches a particular launch path of a .cu source (the comments name it) and runs under several emulator
settings: the default thread order, the warp-serial shuffled order with two seeds (one warp runs ahead to the next
__syncthreads, which is how a missing barrier shows), the reverse orders and a one-block grid cap (every grid-stride
loop runs more than once per thread). A kernel whose result does not depend on the order of its threads gives the
same bits under every setting of one SM count; the RoIAlign backwards accumulate with atomics and are compared
within the tolerance only.

Each comparison records its relative error (RESNEST_EMU_ERRORS=path.json writes them, per op and dtype).
"""

import itertools
import json
import os

import pytest
import torch

from resnest_cuda import emulation

from .tolerances import REL_TOL, assert_matches_reference

pytestmark = [
    pytest.mark.skipif(not emulation.available(), reason="needs the emulated-CUDA build (RESNEST_EMULATE_CUDA=1)"),
]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Emulator settings every case runs under; the first is the baseline the others must equal bit for bit.
SETTINGS = [
    dict(schedule="forward"),
    dict(schedule="warps-shuffle", seed=1),
    dict(schedule="warps-shuffle", seed=2),
    dict(schedule="warps-reverse"),
    dict(schedule="shuffle", seed=3, max_blocks=1),
]
ERRORS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _errors_report():
    if emulation.available():
        emulation.load()
    yield
    path = os.environ.get("RESNEST_EMU_ERRORS")
    if path and ERRORS:
        old = {}
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
        for k, v in ERRORS.items():
            old[k] = max(old.get(k, 0.0), v)
        with open(path, "w") as f:
            json.dump(old, f, indent=1, sort_keys=True)


def emu(name):
    return getattr(torch.ops.resnest_emu, name).default


def cpu(name):
    return getattr(torch.ops.resnest_cuda, name).default


def _as_list(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _record(op, dtype, actual, expected):
    a = actual.detach().double()
    e = expected.detach().double()
    if e.numel() == 0:
        return
    norm = e.norm().item()
    rel = (a - e).norm().item() / (norm if norm > 0 else 1.0)
    key = f"{op} {str(dtype).replace('torch.', '')}"
    ERRORS[key] = max(ERRORS.get(key, 0.0), rel)


def compare_everywhere(
    op, args, dtype=None, deterministic=True, exact=False, settings=SETTINGS, sm_count=None, tol=None
):
    """Runs resnest_emu::op under every emulator setting and resnest_cuda::op (the CPU kernel) once: each emulated
    result must match the CPU one (bitwise when `exact`, else within `tol`, default REL_TOL of its dtype) and, when
    `deterministic`, equal the first setting's bit for bit."""
    expected = _as_list(cpu(op)(*args))
    baseline = None
    for setting in settings:
        with emulation.settings(**setting, sm_count=sm_count):
            actual = _as_list(emu(op)(*args))
        assert len(actual) == len(expected)
        for i, (a, e) in enumerate(zip(actual, expected)):
            where = f"{op} output {i} under {setting}"
            assert a.shape == e.shape and a.dtype == e.dtype, f"{where}: {a.shape} {a.dtype} vs {e.shape} {e.dtype}"
            assert a.stride() == e.stride() or a.numel() <= 1, f"{where}: strides {a.stride()} vs {e.stride()}"
            if exact or not a.is_floating_point():
                assert torch.equal(a, e), f"{where}: differs from the CPU kernel"
            else:
                _record(op, dtype or a.dtype, a, e)
                assert_matches_reference(a, e, tol=tol or REL_TOL[a.dtype], name=where)
        if baseline is None:
            baseline = actual
        elif deterministic:
            for i, (a, b) in enumerate(zip(actual, baseline)):
                assert torch.equal(_bits(a), _bits(b)), (
                    f"{op} output {i}: not bitwise equal under {setting} and {settings[0]}"
                )
    return expected


def _bits(t):
    return t.contiguous().reshape(-1).view(torch.uint8) if t.is_floating_point() else t


def misaligned(t):
    """A copy of t with the same strides whose data starts one element past a 16-byte boundary (the scalar
    paths of the vectorised kernels)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype)
    out = buf[1:].as_strided(t.shape, t.stride())
    out.copy_(t)
    assert out.data_ptr() % 16 != 0
    return out


# --------------------------------------------------------------------------------------------- split attention

# (batch, radix, cardinality, channels per split, H, W, layout, aligned): what each reaches
SPLIT_CASES = {
    "nchw-warp-rows-vec": (2, 2, 1, 16, 7, 7, "nchw", True),  # H*W <= 2048: a warp per row, vector loads
    "nchw-warp-rows-scalar": (2, 2, 2, 6, 5, 9, "nchw", False),  # misaligned: scalar loads, odd rows
    "nchw-1x1": (3, 4, 2, 8, 1, 1, "nchw", True),
    "nchw-sigmoid-odd": (2, 1, 1, 5, 3, 7, "nchw", True),  # radix 1 (sigmoid), C*H*W not a multiple of V
    "nchw-block-rows-vec": (1, 2, 2, 4, 48, 50, "nchw", True),  # H*W > 2048: a block per row
    "nchw-block-rows-scalar": (1, 2, 1, 3, 47, 51, "nchw", False),
    "nchw-radix4": (2, 4, 2, 4, 9, 11, "nchw", True),
    "cl-vec": (2, 2, 2, 16, 9, 7, "channels_last", True),  # channels_last, V divides C
    "cl-scalar": (2, 4, 1, 6, 5, 5, "channels_last", True),  # V does not divide C
    "cl-misaligned": (1, 2, 1, 16, 6, 5, "channels_last", False),
    "cl-1x1": (2, 2, 1, 8, 1, 1, "channels_last", True),
    "cl-tall": (1, 2, 1, 8, 70, 64, "channels_last", True),  # many pixels per column: split reductions
}


def split_inputs(spec, dtype, seed=0):
    b, r, k, c, h, w, layout, aligned = spec
    channels = k * c
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, r * channels, h, w, generator=g, dtype=torch.float64)
    logits = torch.randn(b, r * channels, generator=g, dtype=torch.float64) * 2
    grad_out = torch.randn(b, channels, h, w, generator=g, dtype=torch.float64)
    grad_gap = torch.randn(b, channels, generator=g, dtype=torch.float64)
    x, logits, grad_out, grad_gap = (t.to(dtype) for t in (x, logits, grad_out, grad_gap))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    if not aligned:
        x, grad_out = misaligned(x), misaligned(grad_out)
    return x, logits, grad_out, grad_gap, r, k


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_split_attention_kernels(case, dtype):
    x, logits, grad_out, grad_gap, r, k = split_inputs(SPLIT_CASES[case], dtype)
    compare_everywhere("split_attention_pool", (x, r))
    out = compare_everywhere("split_attention_combine", (x, logits, r, k))[0]
    assert out.abs().sum() > 0
    compare_everywhere("split_attention_combine_backward", (grad_out, x, logits, r, k))
    compare_everywhere("split_attention_logits_backward", (grad_out, x, logits, r, k))
    compare_everywhere("split_attention_input_backward", (grad_out, logits, grad_gap, r, k))
    compare_norm_tail(x, logits, grad_out, grad_gap, r, k)


def norm_args(x, seed=0):
    """Statistics and affine parameters of a BatchNorm over x's channels (the split_attention_norm_* ops)."""
    g = torch.Generator().manual_seed(seed)
    stats = torch.float64 if x.dtype == torch.float64 else torch.float32
    rc = x.shape[1]
    mean = (torch.randn(rc, generator=g, dtype=torch.float64) * 0.3).to(stats)
    var = (torch.rand(rc, generator=g, dtype=torch.float64) + 0.5).to(stats)
    weight = (torch.rand(rc, generator=g, dtype=torch.float64) + 0.5).to(stats)
    bias = (torch.randn(rc, generator=g, dtype=torch.float64) * 0.5).to(stats)
    return mean, var, weight, bias


def compare_norm_tail(x, logits, grad_out, grad_gap, r, k, settings=SETTINGS, sm_count=None):
    """The split-attention ops after BatchNorm + ReLU (split_attention.cpp): forward and backward steps."""
    mean, var, w, b = norm_args(x)
    eps = 1e-5
    kw = dict(settings=settings, sm_count=sm_count)
    compare_everywhere("split_attention_norm_pool", (x, mean, var, w, b, eps, r), **kw)
    compare_everywhere("split_attention_norm_combine", (x, mean, var, w, b, eps, logits, r, k), **kw)
    _, sums = compare_everywhere(
        "split_attention_norm_backward_reduce", (grad_out, x, mean, var, w, b, eps, logits, r, k), **kw
    )
    hw = x.shape[2] * x.shape[3]
    sum_dy, sum_dy_xhat = compare_everywhere(
        "split_attention_norm_backward_sums", (sums, logits, grad_gap, var, eps, r, k, hw), **kw
    )
    count = torch.tensor(float(x.shape[0] * hw), dtype=mean.dtype)
    compare_everywhere(
        "split_attention_norm_backward_input",
        (grad_out, x, mean, var, w, b, eps, logits, grad_gap, sum_dy, sum_dy_xhat, count, r, k),
        **kw,
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize(
    "spec",
    [(1, 2, 1, 2, 128, 130, "nchw", True), (1, 2, 2, 2, 127, 131, "nchw", False), SPLIT_CASES["cl-tall"]],
    ids=["nchw-long-vec", "nchw-long-scalar", "cl-tall"],
)
def test_split_attention_reductions_split_over_many_blocks(spec, dtype):
    # 64 SMs: the long rows are cut into several splits, each a block of its own, summed by a second kernel.
    x, logits, grad_out, grad_gap, r, k = split_inputs(spec, dtype, seed=3)
    settings = [dict(schedule="forward"), dict(schedule="warps-shuffle", seed=1), dict(max_blocks=1)]
    for op, args in [
        ("split_attention_pool", (x, r)),
        ("split_attention_combine_backward", (grad_out, x, logits, r, k)),
        ("split_attention_logits_backward", (grad_out, x, logits, r, k)),
    ]:
        compare_everywhere(op, args, settings=settings, sm_count=64)
    compare_norm_tail(x, logits, grad_out, grad_gap, r, k, settings=settings, sm_count=64)


def test_split_attention_empty_and_zero_channel_inputs():
    for b, rc in [(0, 8), (2, 0)]:
        x = torch.randn(b, rc, 3, 3)
        logits = torch.randn(b, rc)
        grad_out = torch.randn(b, rc // 2, 3, 3)
        compare_everywhere("split_attention_pool", (x, 2), settings=SETTINGS[:1])
        compare_everywhere("split_attention_combine", (x, logits, 2, 1), settings=SETTINGS[:1])
        compare_everywhere("split_attention_combine_backward", (grad_out, x, logits, 2, 1), settings=SETTINGS[:1])


def test_split_attention_non_finite_inputs_propagate_alike():
    x, logits, grad_out, grad_gap, r, k = split_inputs(SPLIT_CASES["nchw-warp-rows-vec"], torch.float32)
    x[0, 3, 2, 2] = float("nan")
    x[1, 5, 0, 0] = float("inf")
    for op, args in [("split_attention_pool", (x, r)), ("split_attention_combine", (x, logits, r, k))]:
        a = emu(op)(*args)
        e = cpu(op)(*args)
        assert torch.equal(a.isnan(), e.isnan()) and torch.equal(a.isinf(), e.isinf())
        finite = e.isfinite()
        assert torch.equal(a[finite], e[finite]) or torch.allclose(a[finite], e[finite], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- RoIAlign


def roi_align_inputs(dtype, layout, batch=2, channels=5, height=13, width=17, num=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        wide = torch.zeros(batch, channels, height, 2 * width, dtype=dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
    # Boxes in map coordinates (scale 0.5 of image coordinates): inside, across the edges and wholly off the map.
    xy = torch.rand(num, 2, generator=g, dtype=torch.float64) * torch.tensor([2 * width + 8, 2 * height + 8]) - 8
    wh = torch.rand(num, 2, generator=g, dtype=torch.float64) * 20 + 0.2
    idx = torch.randint(0, batch, (num, 1), generator=g).double()
    rois = torch.cat([idx, xy, xy + wh], dim=1)
    rois[-1, 1:] = torch.tensor([-40.0, -40.0, -20.0, -20.0])  # off the map
    rois[-2, 0] = -1  # bad batch indices pool to zero
    rois[-3, 0] = batch
    rois[-4, 0] = float("nan")
    rois[-5, 1] = float("nan")  # non-finite coordinates
    rois[-6, 3] = float("inf")
    return x, rois.to(dtype)


ROI_SETTINGS = SETTINGS[:3] + SETTINGS[4:]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_roi_align_kernels(layout, dtype):
    # channels_last with sampling_ratio <= 64 takes the warp-per-bin kernels, everything else the
    # thread-per-element ones; 65 samples per bin axis exceed the bins kernels' shared taps.
    x, rois = roi_align_inputs(dtype, layout)
    for (sampling, aligned), (ph, pw) in zip(
        itertools.product([0, 2, 65], [True, False]), itertools.cycle([(3, 2), (7, 7)])
    ):
        if sampling == 65 and dtype != torch.float64:
            # 65 x 65 samples per bin: in fp32, thousands of adds into each input pixel, ordered differently by
            # the atomics and the CPU loop, are up to ~1e-4 apart (per element, relative to the sum of the
            # magnitudes); fp64 compares that path to 1e-10
            continue
        out = compare_everywhere(
            "roi_align", (x, rois, 0.5, ph, pw, sampling, aligned), exact=True, settings=ROI_SETTINGS
        )[0]
        assert out.abs().sum() > 0
        g = torch.Generator().manual_seed(sampling)
        grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
        if layout == "channels_last":
            grad = grad.contiguous(memory_format=torch.channels_last)
        b, c, h, w = x.shape
        compare_everywhere(
            "roi_align_backward",
            (grad, rois, 0.5, ph, pw, b, c, h, w, sampling, aligned, layout == "channels_last"),
            dtype=dtype,
            deterministic=False,
            settings=ROI_SETTINGS,
        )


def test_roi_align_empty_inputs():
    x, rois = roi_align_inputs(torch.float32, "channels_last")
    compare_everywhere("roi_align", (x, rois[:0], 0.5, 2, 2, 2, True), settings=SETTINGS[:1])
    compare_everywhere("roi_align", (x[:, :0], rois, 0.5, 2, 2, 2, True), settings=SETTINGS[:1])
    compare_everywhere("roi_align", (torch.randn(2, 3, 0, 4), rois, 0.5, 2, 2, 2, True), settings=SETTINGS[:1])
    grad = torch.randn(0, 5, 2, 2)
    compare_everywhere(
        "roi_align_backward", (grad, rois[:0], 0.5, 2, 2, 2, 5, 13, 17, 2, True, False), settings=SETTINGS[:1]
    )


STRIDES = (4, 8, 16, 32)


def pyramid(dtype, layouts, batch=2, channels=5, size=(64, 96), seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = []
    for s, layout in zip(STRIDES, layouts):
        f = torch.randn(batch, channels, size[0] // s, size[1] // s, generator=g, dtype=torch.float64).to(dtype)
        feats.append(f.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else f)
    return feats


def level_rois(num=40, batch=2, size=(64, 96), seed=1):
    g = torch.Generator().manual_seed(seed)
    # Sizes spread over all four levels (finest_scale 56: level k holds boxes of about 56 * 2**k px).
    side = torch.exp(torch.rand(num, 2, generator=g, dtype=torch.float64) * 5.5 + 1.0)
    xy = torch.rand(num, 2, generator=g, dtype=torch.float64) * torch.tensor([size[1], size[0]]) - side / 2
    idx = torch.randint(0, batch, (num, 1), generator=g).double()
    rois = torch.cat([idx, xy, xy + side], dim=1)
    rois[-1, 0] = -1
    rois[-2, 2] = float("nan")
    return rois


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("layouts", ["nchw", "channels_last", "mixed"])
def test_multi_level_roi_align_kernels(layouts, dtype):
    per_level = {
        "nchw": ["nchw"] * 4,
        "channels_last": ["channels_last"] * 4,
        "mixed": ["channels_last", "nchw", "channels_last", "nchw"],
    }[layouts]
    feats = pyramid(dtype, per_level)
    rois = level_rois().to(dtype)
    scales = [1.0 / s for s in STRIDES]
    for sampling, aligned in [(0, True), (2, False)]:
        out = compare_everywhere(
            "multi_level_roi_align",
            (feats, rois, scales, 7, 7, 56.0, sampling, aligned),
            exact=True,
            settings=ROI_SETTINGS,
        )[0]
        assert out.abs().sum() > 0
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
        b, c = feats[0].shape[:2]
        compare_everywhere(
            "multi_level_roi_align_backward",
            (
                grad,
                rois,
                scales,
                7,
                7,
                b,
                c,
                [f.shape[2] for f in feats],
                [f.shape[3] for f in feats],
                56.0,
                sampling,
                aligned,
                [p == "channels_last" for p in per_level],
            ),
            dtype=dtype,
            deterministic=False,
            settings=ROI_SETTINGS,
        )


# --------------------------------------------------------------------------------------------------------- NMS


def nms_boxes(n, dtype=torch.float32, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(max(n // 6, 1), 2, generator=g) * 200
    pick = torch.randint(0, centres.shape[0], (n,), generator=g)
    xy = centres[pick] + torch.randn(n, 2, generator=g) * 6
    wh = torch.rand(n, 2, generator=g) * 30 + 4
    boxes = torch.cat([xy, xy + wh], dim=1).to(dtype)
    scores = torch.rand(n, generator=g)
    if ties:
        scores = (scores * 4).round() / 4  # many equal scores: the stable order decides
    return boxes, scores.to(dtype)


@pytest.mark.parametrize("n", [1, 63, 64, 65, 130, 1000])
def test_nms_kernels_across_word_boundaries(n):
    for dtype, ties in [(torch.float32, False), (torch.float64, True), (torch.float16, False), (torch.bfloat16, True)]:
        boxes, scores = nms_boxes(n, dtype, seed=n, ties=ties)
        idxs = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(n))
        settings = SETTINGS if n <= 130 else SETTINGS[:2]
        keep = compare_everywhere("nms", (boxes, scores, 0.5), settings=settings)[0]
        assert 0 < keep.numel() <= n
        compare_everywhere("nms", (boxes, scores, 0.5, 5), settings=settings[:2])
        compare_everywhere("nms_fixed", (boxes, scores, 0.6, 70), settings=settings)
        compare_everywhere("_batched_nms_per_class", (boxes, scores, idxs, 0.5), settings=settings)
        compare_everywhere("_batched_nms_per_class", (boxes, scores, idxs, 0.5, 3), settings=settings[:2])
        compare_everywhere("_batched_nms_per_class_fixed", (boxes, scores, idxs, 0.4, 90), settings=settings)


def test_nms_more_than_8192_boxes():
    # 141 words per row: the suppression mask is larger than one keep_kernel block's worth of rows many times.
    boxes, scores = nms_boxes(9000, seed=7)
    keep = compare_everywhere("nms", (boxes, scores, 0.7), settings=SETTINGS[:1])[0]
    assert 100 < keep.numel() < 9000


def test_nms_empty_and_degenerate():
    compare_everywhere("nms", (torch.zeros(0, 4), torch.zeros(0), 0.5), settings=SETTINGS[:1])
    compare_everywhere("nms_fixed", (torch.zeros(0, 4), torch.zeros(0), 0.5, 4), settings=SETTINGS[:1])
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 5 + [[5.0, 5, 5, 5], [3.0, 3, 1, 1]])  # identical, empty, inverted
    scores = torch.tensor([0.5] * 7)
    compare_everywhere("nms", (boxes, scores, 0.5), settings=SETTINGS)
    compare_everywhere("nms_fixed", (boxes, scores, 0.5, 9), settings=SETTINGS)


# -------------------------------------------------------------------------------------- fused BatchNorm + ReLU

# (shape, layout, masked): what each reaches in csrc/batch_norm/cuda/batch_norm_act_cuda.cu
BN_CASES = {
    "nchw-planes": ((3, 5, 6, 7), "nchw", False),  # L < kThreads: positions walked across rows
    "nchw-1x1": ((6, 40, 1, 1), "nchw", True),  # L = 1 (the split-attention bn1), masked rows
    "nchw-split": ((2, 3, 40, 50), "nchw", True),  # many positions per channel: the reduction split over blocks
    "nchw-2d": ((7, 9), "nchw", False),  # [N, C]
    "cl-partial-tile": ((2, 40, 5, 3), "channels_last", True),  # 40 channels: one full 32-channel tile, one partial
    "cl-split": ((2, 8, 30, 40), "channels_last", False),  # many rows per channel tile: split reductions
    "strided": ((3, 6, 4, 5), "strided", True),  # read through an NCHW copy
}


def bn_inputs(spec, dtype, seed=0):
    shape, layout, masked = spec
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2).to(dtype)
    res = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    grad = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    if layout == "channels_last":
        x, res, grad = (t.contiguous(memory_format=torch.channels_last) for t in (x, res, grad))
    elif layout == "strided":
        x, res, grad = (torch.stack([t, t], -1)[..., 1] for t in (x, res, grad))
    rows = (torch.arange(shape[0]) % 3 != 1) if masked else None
    stats = torch.float64 if dtype == torch.float64 else torch.float32
    weight = torch.linspace(0.5, 1.5, shape[1], dtype=stats)
    bias = torch.linspace(-0.3, 0.3, shape[1], dtype=stats)
    return x, res, grad, rows, weight, bias


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", list(BN_CASES))
def test_batch_norm_kernels(case, dtype):
    x, res, grad, rows, weight, bias = bn_inputs(BN_CASES[case], dtype)
    settings = SETTINGS if x.numel() <= 5000 else SETTINGS[:2]
    mean, var, count = compare_everywhere("batch_norm_stats", (x, rows), dtype, settings=settings, sm_count=8)
    y = compare_everywhere("batch_norm_act", (x, mean, var, weight, bias, res, 1e-5, True), dtype, settings=settings)[0]
    compare_everywhere("batch_norm_act", (x, mean, var, None, None, None, 1e-5, False), dtype, settings=settings[:1])
    # The residual's form (mask read from y, g written) and the plain form (mask recomputed from x).
    sum_dy, sum_dy_xhat, g = compare_everywhere(
        "batch_norm_act_backward_reduce",
        (grad, x, y, mean, var, weight, bias, 1e-5, True),
        dtype,
        settings=settings,
        sm_count=8,
    )
    # The output gradient in three parts (aliases of y for three consumers), summed inside the reduction.
    parts = (grad * 0.5, torch.flip(grad, [0]), grad * -0.25)
    compare_everywhere(
        "batch_norm_act_backward_reduce",
        (parts[0], x, y, mean, var, weight, bias, 1e-5, True, parts[1], parts[2]),
        dtype,
        settings=settings[:2],
        sm_count=8,
    )
    y_plain = compare_everywhere(
        "batch_norm_act", (x, mean, var, weight, bias, None, 1e-5, True), dtype, settings=settings[:1]
    )[0]
    plain = compare_everywhere(
        "batch_norm_act_backward_reduce",
        (grad, x, None, mean, var, weight, bias, 1e-5, True),
        dtype,
        settings=settings,
        sm_count=8,
    )
    assert (y_plain == 0).any() and (y_plain > 0).any()
    compare_everywhere(
        "batch_norm_act_backward_input",
        (g, x, mean, var, weight, bias, sum_dy, sum_dy_xhat, count, rows, 1e-5, False),
        dtype,
        settings=settings,
    )
    compare_everywhere(
        "batch_norm_act_backward_input",
        (grad, x, mean, var, weight, bias, plain[0], plain[1], count, rows, 1e-5, True),
        dtype,
        settings=settings,
    )
    compare_everywhere(
        "batch_norm_act_backward_input",
        (grad, x, mean, var, None, None, sum_dy, sum_dy_xhat, count, None, 1e-5, False),
        dtype,
        settings=settings[:1],
    )


@pytest.mark.parametrize("running_dtype", [torch.float32, torch.float64])
def test_batch_norm_running_statistics_update(running_dtype):
    """The update in the statistics kernel (running buffers of the statistics dtype) and through ATen ops (other
    dtypes) equal the CPU kernel's, the cumulative average (momentum < 0) included."""
    x, _, _, rows, _, _ = bn_inputs(BN_CASES["cl-partial-tile"], torch.float32)
    for momentum in (0.1, -1.0):
        outs = []
        for op in (cpu("batch_norm_stats"), emu("batch_norm_stats")):
            rm = torch.linspace(-1, 1, 40, dtype=running_dtype)
            rv = torch.linspace(0.5, 2, 40, dtype=running_dtype)
            nbt = torch.tensor(4)
            op(x, rows, rm, rv, nbt, momentum)
            outs.append((rm, rv, nbt))
        (rm_c, rv_c, n_c), (rm_e, rv_e, n_e) = outs
        assert n_c.item() == n_e.item() == 5
        assert_matches_reference(rm_e, rm_c, tol=1e-6)
        assert_matches_reference(rv_e, rv_c, tol=1e-6)
        assert not torch.equal(rm_c, torch.linspace(-1, 1, 40, dtype=running_dtype))


def test_batch_norm_empty_and_zero_channel_inputs():
    for shape in ((0, 4, 3, 3), (2, 0, 3, 3), (2, 3, 0, 4)):
        x = torch.randn(shape)
        mean, var, count = compare_everywhere("batch_norm_stats", (x, None), settings=SETTINGS[:1])
        assert count.item() == shape[0] * shape[2] * shape[3]
        y = compare_everywhere("batch_norm_act", (x, mean, var, None, None, None, 1e-5, True), settings=SETTINGS[:1])
        for y_read in (y[0], None):
            sums = compare_everywhere(
                "batch_norm_act_backward_reduce",
                (x, x, y_read, mean, var, None, None, 1e-5, True),
                settings=SETTINGS[:1],
            )
        compare_everywhere(
            "batch_norm_act_backward_input",
            (x, x, mean, var, None, None, sums[0], sums[1], count, None, 1e-5, True),
            settings=SETTINGS[:1],
        )


# ------------------------------------------------------------------------------------------------- the op table


def test_every_cuda_kernel_has_an_emulated_twin():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "csrc"
    registered = set()
    for src in root.rglob("*.cu"):
        text = src.read_text()
        for block in re.findall(r"RESNEST_CUDA_KERNELS\(m\)\s*\{(.*?)\n\}", text, flags=re.S):
            registered.update(re.findall(r'm\.impl\("(\w+)"', block))
    registered = {name for name in registered if not name.startswith("_emu_")}
    assert len(registered) >= 17
    assert registered <= set(emulation.ops())


def test_a_wrong_result_fails_the_comparison():
    x, logits, grad_out, grad_gap, r, k = split_inputs(SPLIT_CASES["cl-vec"], torch.bfloat16)
    e = cpu("split_attention_combine")(x, logits, r, k)
    with pytest.raises(AssertionError):
        assert_matches_reference(torch.zeros_like(e), e)
    with pytest.raises(AssertionError):
        assert_matches_reference(e * (1 + 4 * REL_TOL[e.dtype]), e)
