"""multi_level_roi_align against its reference, against roi_align on the assigned level, and against the per-level
pooler it replaces (output and gradients in fp64); level assignment, dtypes, layouts, empty inputs, opcheck,
gradcheck and torch.compile."""

import pytest
import torch

import resnest_cuda
from resnest_cuda import reference

from .helpers import devices

STRIDES = (4, 8, 16, 32)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def pyramid(batch=2, channels=3, size=(160, 224), dtype=torch.float64, device="cpu", seed=0, strides=STRIDES):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, channels, -(-size[0] // s), -(-size[1] // s), generator=g, dtype=torch.float64)
        .to(dtype)
        .to(device)
        for s in strides
    ]


def random_rois(k, batch=2, size=(160, 224), seed=1, device="cpu"):
    """ROIs of 4.5 to 735 px (every level is used), many reaching outside the image."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.empty(k, 1).uniform_(1.5, 6.6, generator=g))  # sqrt(area): 4.5 .. 735 px
    ratio = torch.exp(torch.empty(k, 1).uniform_(-0.7, 0.7, generator=g))
    side = torch.cat([scale * ratio.sqrt(), scale / ratio.sqrt()], 1)
    xy = torch.rand(k, 2, generator=g) * torch.tensor([size[1], size[0]]) - 10
    idx = torch.randint(0, batch, (k, 1), generator=g).double()
    return torch.cat([idx, xy, xy + side], 1).to(device)


def per_level_pooler(features, rois, output_size, strides, finest_scale=56.0, sampling_ratio=0, aligned=True):
    """The pooler the op replaces: a nonzero + roi_align + scatter pass per level (torch.log2 level rule)."""
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(0, len(features) - 1).long()
    out = features[0].new_zeros(rois.shape[0], features[0].shape[1], output_size, output_size)
    for level, stride in enumerate(strides):
        idx = torch.nonzero(levels == level).squeeze(1)
        if idx.numel():
            pooled = resnest_cuda.roi_align(features[level], rois[idx], output_size, 1.0 / stride, sampling_ratio,
                                            aligned)
            out = out.index_put((idx,), pooled)
    return out


def test_pyramid_levels_rule():
    # sqrt(area) of 56 px -> level 0 up to 112 px (exclusive), 112 -> 1, 224 -> 2, 448 -> 3, more stays at 3.
    sides = torch.tensor([1.0, 20, 111.9, 112, 223, 224, 447, 448, 5000, 0, -5])
    boxes = torch.stack([torch.zeros(11), torch.zeros(11), sides, sides], 1)
    assert reference.pyramid_levels(boxes, 4).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 0, 0]
    assert reference.pyramid_levels(boxes, 2).tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    nan_inf = torch.tensor([[0.0, 0, float("nan"), 1], [0.0, 0, float("inf"), 1]])
    assert reference.pyramid_levels(nan_inf, 4).tolist() == [0, 3]


@pytest.mark.parametrize("device", devices())
def test_each_roi_equals_roi_align_on_its_level(device):
    features = pyramid(dtype=torch.float32, device=device)
    rois = random_rois(60, device=device)
    out = resnest_cuda.multi_level_roi_align(features, rois.float(), 7, STRIDES)
    levels = reference.pyramid_levels(rois[:, 1:].float().cpu(), 4)
    assert set(levels.tolist()) == {0, 1, 2, 3}  # the test covers every level
    for k in range(rois.shape[0]):
        level = int(levels[k])
        want = resnest_cuda.roi_align(features[level], rois[k : k + 1].float(), 7, 1.0 / STRIDES[level])
        assert torch.equal(out[k : k + 1], want), k


@pytest.mark.parametrize("device", devices())
def test_samples_outside_the_map_ignore_non_finite_edges(device):
    """A RoI reaching above and left of the map has sample rows and columns outside it: with inf in the map's
    first row and column the multi-level op equals roi_align, the bins sampled only above the map are 0 (not
    0 * inf), and a non-finite output gradient of a bin sampled only outside puts nothing (no NaN) into the map's
    gradient, on CPU and CUDA alike."""
    features = [torch.rand(1, 2, 16, 20, dtype=torch.float64, device=device) for _ in range(4)]
    features[0][..., 0, :] = float("inf")
    features[0][..., :, 0] = float("inf")
    rois = torch.tensor([[0.0, -30.0, -30.0, 6.0, 6.0]], dtype=torch.float64, device=device)  # level 0, stride 4
    feats = [f.requires_grad_() for f in features]
    out = resnest_cuda.multi_level_roi_align(feats, rois, 4, STRIDES, sampling_ratio=2)
    single = features[0].detach().clone().requires_grad_()
    want = resnest_cuda.roi_align(single, rois, 4, 1.0 / STRIDES[0], 2)
    torch.testing.assert_close(out, want, rtol=0, atol=0, equal_nan=True)
    # Bins whose sample rows all lie above the map are exactly 0 (a sample column left of it still multiplies the
    # edge by a zero weight in every kernel, CPU and CUDA alike, so a non-finite edge column reaches its bins).
    assert (out[..., :3, :] == 0).all()
    grad = torch.ones_like(out)
    grad[..., 0, 0] = float("inf")  # the corner bin: its samples lie outside the map
    out.backward(grad)
    want.backward(grad)
    torch.testing.assert_close(feats[0].grad, single.grad, rtol=0, atol=0, equal_nan=True)
    assert not torch.isnan(feats[0].grad).any()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_reference(device, dtype, channels_last):
    features = pyramid(dtype=dtype, device=device)
    if channels_last:
        features = [f.contiguous(memory_format=torch.channels_last) for f in features]
    rois = random_rois(40, device=device).float()
    out = resnest_cuda.multi_level_roi_align(features, rois, (5, 6), STRIDES, sampling_ratio=2)
    want = reference.multi_level_roi_align(features, rois, (5, 6), STRIDES, sampling_ratio=2)
    assert out.dtype == dtype and out.shape == (40, 3, 5, 6)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(out.double(), want.double(), rtol=TOL[dtype], atol=TOL[dtype])
    assert want.abs().max() > 0.1  # the comparison is not between zeros


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("aligned", [True, False])
def test_equals_per_level_pooler_output_and_gradients_fp64(device, aligned):
    features = [f.requires_grad_() for f in pyramid(device=device, seed=3)]
    rois = random_rois(50, seed=4, device=device).float().double()  # fp32 coordinates, as the detector uses
    grad_out = torch.randn(50, 3, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).to(device)
    ours = resnest_cuda.multi_level_roi_align(features, rois, 7, STRIDES, aligned=aligned)
    (ours * grad_out).sum().backward()
    grads = [f.grad.clone() for f in features]
    for f in features:
        f.grad = None
    old = per_level_pooler(features, rois, 7, STRIDES, aligned=aligned)
    (old * grad_out).sum().backward()
    torch.testing.assert_close(ours, old, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, [f.grad for f in features]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert want.abs().max() > 0  # every level receives gradient


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_backward_matches_reference(device, dtype):
    features = [f.requires_grad_() for f in pyramid(dtype=dtype, device=device, seed=6)]
    rois = random_rois(30, seed=7, device=device).float()
    grad_out = torch.randn(30, 3, 7, 7, generator=torch.Generator().manual_seed(8)).to(dtype).to(device)
    grads = torch.autograd.grad(resnest_cuda.multi_level_roi_align(features, rois, 7, STRIDES), features, grad_out)
    want = torch.autograd.grad(reference.multi_level_roi_align(features, rois, 7, STRIDES), features, grad_out)
    for got, ref in zip(grads, want):
        assert got.dtype == dtype and got.shape == ref.shape
        torch.testing.assert_close(got.double(), ref.double(), rtol=4 * TOL[dtype], atol=4 * TOL[dtype])


@pytest.mark.parametrize("device", devices())
def test_gradcheck_fp64(device):
    features = [f.requires_grad_() for f in pyramid(batch=2, channels=1, size=(48, 64), device=device, seed=9)]
    rois = random_rois(6, size=(48, 64), seed=10, device=device)

    def fn(*feats):
        return resnest_cuda.multi_level_roi_align(list(feats), rois, 3, STRIDES, sampling_ratio=2)

    assert torch.autograd.gradcheck(fn, tuple(features), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("device", devices())
def test_empty_rois_and_empty_levels(device):
    features = [f.requires_grad_() for f in pyramid(device=device)]
    out = resnest_cuda.multi_level_roi_align(features, torch.empty(0, 5, device=device), 7, STRIDES)
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()
    assert all(f.grad is not None and not f.grad.any() for f in features)
    # A level with an empty map pools its ROIs to 0 (and no gradient), the other levels are unaffected.
    feats = pyramid(device=device)
    feats[3] = feats[3][:, :, :0]
    rois = random_rois(40, device=device).float()
    out = resnest_cuda.multi_level_roi_align(feats, rois, 7, STRIDES)
    torch.testing.assert_close(out, reference.multi_level_roi_align(feats, rois, 7, STRIDES))
    levels = reference.pyramid_levels(rois[:, 1:].cpu(), 4)
    assert not out[levels == 3].any() and out[levels == 0].abs().max() > 0
    # No channels, a single level.
    one = resnest_cuda.multi_level_roi_align([torch.zeros(2, 0, 5, 5, device=device)], rois, 2, (4,))
    assert one.shape == (40, 0, 2, 2)


@pytest.mark.parametrize("device", devices())
def test_opcheck(device):
    features = pyramid(batch=2, channels=1, size=(48, 64), dtype=torch.float32, device=device)
    rois = random_rois(4, size=(48, 64), device=device).float()
    scales = [1.0 / s for s in STRIDES]
    for f in features:
        f.requires_grad_()
    torch.library.opcheck(torch.ops.resnest_cuda.multi_level_roi_align.default,
                          (features, rois, scales, 3, 3, 56.0, 0, True))


@pytest.mark.parametrize("device", devices())
def test_torch_compile_fullgraph(device):
    features = [f.requires_grad_() for f in pyramid(dtype=torch.float32, device=device)]
    rois = random_rois(20, device=device).float()

    def pool(feats, rois):
        return resnest_cuda.multi_level_roi_align(feats, rois, 7, STRIDES).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(pool, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(features, rois), features)
    want = torch.autograd.grad(pool(features, rois), features)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


BAD = [
    (dict(features=torch.zeros(2, 3, 8, 8)), TypeError, "features must be a list"),
    (dict(features=[]), ValueError, "1 to 8 levels"),
    (dict(features=[torch.zeros(2, 3, 8)] * 4), ValueError, r"features\[0\] must be a 4-D"),
    (dict(features=[torch.zeros(2, 3, 8, 8, dtype=torch.int32)] * 4), TypeError, r"features\[0\]"),
    (dict(features=[torch.zeros(2, 3, 8, 8)] * 3 + [torch.zeros(2, 4, 4, 4)]), ValueError, r"features\[3\]"),
    (dict(features=[torch.zeros(2, 3, 8, 8)] * 3 + [torch.zeros(2, 3, 4, 4).double()]), ValueError, r"features\[3\]"),
    (dict(rois=torch.zeros(3, 4)), ValueError, "rois"),
    (dict(rois=torch.zeros(3, 5, dtype=torch.int64)), TypeError, "rois"),
    (dict(rois=torch.zeros(3, 5, device="meta")), ValueError, "rois"),
    (dict(strides=(4, 8, 16)), ValueError, "strides"),
    (dict(strides=(4, 8, 16, 0)), ValueError, "strides"),
    (dict(finest_scale=0), ValueError, "finest_scale"),
    (dict(sampling_ratio=1.5), TypeError, "sampling_ratio"),
    (dict(aligned=1), TypeError, "aligned"),
    (dict(output_size=0), ValueError, "output_size"),
]


@pytest.mark.parametrize("override, error, match", BAD)
def test_bad_inputs(override, error, match):
    args = dict(features=[torch.zeros(2, 3, 8, 8)] * 4, rois=torch.zeros(3, 5), output_size=7, strides=STRIDES,
                finest_scale=56.0, sampling_ratio=0, aligned=True)
    args.update(override)
    with pytest.raises(error, match=match):
        resnest_cuda.multi_level_roi_align(**args)


def test_raw_op_refuses_no_levels():
    with pytest.raises(RuntimeError, match="levels"):  # the op's own check
        torch.ops.resnest_cuda.multi_level_roi_align([], torch.zeros(0, 5), [], 7, 7, 56.0, 0, True)


@pytest.mark.parametrize("channels_last", [False, True])
def test_detector_pooler_equals_the_per_level_pooler_fp64_with_no_host_sync(channels_last):
    from benchmarks.count_syncs import count_syncs
    from detection.modeling.poolers import MultiScaleRoIAlign

    features = pyramid(seed=11) + [torch.randn(2, 3, 3, 4, dtype=torch.float64)]  # P2-P6; P6 is ignored
    if channels_last:
        features = [f.contiguous(memory_format=torch.channels_last) for f in features]
    features = [f.requires_grad_() for f in features]
    rois = random_rois(64, seed=12)
    grad_out = torch.randn(64, 3, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    pooler = MultiScaleRoIAlign(output_size=7, featmap_strides=STRIDES, sampling_ratio=0)
    with count_syncs() as counter:
        ours = pooler(features, rois)
        (ours * grad_out).sum().backward()
    assert counter.total == 0, counter.sites
    grads = [f.grad.clone() for f in features[:4]]
    assert features[4].grad is None or not features[4].grad.any()
    for f in features:
        f.grad = None
    old = per_level_pooler(features[:4], rois.float().double(), 7, STRIDES)
    (old * grad_out).sum().backward()
    assert torch.equal(ours, old)
    for got, f in zip(grads, features[:4]):
        assert torch.equal(got, f.grad) and f.grad.abs().max() > 0


@pytest.mark.parametrize("device", devices())
def test_double_backward_is_exact(device):
    """The backward is linear in grad with the forward as adjoint: gradgradcheck in fp64 passes."""
    features = [f.requires_grad_() for f in pyramid(batch=1, channels=2, size=(24, 32), device=device)]
    rois = torch.tensor([[0, 1.0, 2, 9, 13], [0, 0, 0, 31, 23], [0, 3, 1, 30, 20]], dtype=torch.float64, device=device)

    def fn(*feats):
        return resnest_cuda.multi_level_roi_align(list(feats), rois, 3, STRIDES, finest_scale=8.0, sampling_ratio=2)

    assert torch.autograd.gradgradcheck(fn, features)
    # The second-order path runs the forward op: a create_graph gradient of a quadratic form is not zero.
    out = fn(*features)
    grads = torch.autograd.grad((out * out).sum(), features, create_graph=True)
    second = torch.autograd.grad(sum((g * g).sum() for g in grads), features)
    assert sum(s.abs().sum() for s in second) > 0


@pytest.mark.parametrize("device", devices())
def test_gradient_keeps_each_level_layout(device):
    features = pyramid(dtype=torch.float32, device=device)
    features = [f.contiguous(memory_format=torch.channels_last) if i % 2 else f for i, f in enumerate(features)]
    features = [f.requires_grad_() for f in features]
    out = resnest_cuda.multi_level_roi_align(features, random_rois(40, device=device).float(), 7, STRIDES)
    grads = torch.autograd.grad(out.sum(), features)
    for i, g in enumerate(grads):
        fmt = torch.channels_last if i % 2 else torch.contiguous_format
        assert g.is_contiguous(memory_format=fmt), i


@pytest.mark.parametrize("device", devices())
def test_bad_rois_pool_to_zero_with_no_gradient(device):
    """Non-finite coordinates and batch indices outside [0, N) (or NaN) pool to 0, as roi_align does, on every
    device; the other RoIs are unaffected."""
    features = [f.requires_grad_() for f in pyramid(dtype=torch.float32, device=device)]
    good = random_rois(6, device=device).float()
    nan, inf = float("nan"), float("inf")
    bad = torch.tensor([[0, nan, 1, 20, 20], [1, 1, 1, inf, 20], [2, 1, 1, 30, 30], [-1, 1, 1, 30, 30],
                        [nan, 1, 1, 30, 30], [0, -inf, -inf, inf, inf]], device=device)
    out = resnest_cuda.multi_level_roi_align(features, torch.cat([good, bad]), 7, STRIDES)
    assert torch.all(out[6:] == 0) and out[:6].flatten(1).abs().amax(1).min() > 0
    assert torch.equal(out[:6], resnest_cuda.multi_level_roi_align(features, good, 7, STRIDES))
    grads = torch.autograd.grad(out[6:].sum(), features, allow_unused=True)
    assert all(g is None or torch.all(g == 0) for g in grads)
    assert torch.all(torch.isfinite(torch.cat([g.flatten() for g in grads if g is not None])))


def test_functorch_transforms_refused():
    features = pyramid(batch=1, channels=2, size=(24, 32))
    rois = torch.tensor([[0, 1.0, 2, 9, 13]], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="multi_level_roi_align: torch.func transforms"):
        torch.func.grad(lambda f: resnest_cuda.multi_level_roi_align([f, *features[1:]], rois, 3, STRIDES).sum())(
            features[0])
