"""RoIAlign layout contract, on every device: a channels_last input gives the values of its contiguous copy, a
channels_last output and a channels_last gradient (single- and multi-level ops; fp32/fp16/bf16 and fp64
gradcheck/opcheck; aligned and legacy mode, adaptive and fixed sampling, empty RoIs, RoIs outside the map,
non-finite inputs). On CUDA a channels_last input runs the channel-fastest kernels and an NCHW input the
one-thread-per-element kernels, so the comparisons are between the two mappings; the reference check and the
non-zero checks make a kernel that returns zeros fail, the layout checks one that returns the wrong layout."""

import contextlib

import pytest
import torch

import resnest_cuda
from resnest_cuda import emulation, reference

from .helpers import devices, is_emulated

CL = torch.channels_last
STRIDES = (4, 8, 16, 32)
# Tolerance of a result against the fp32 reference run on the same rounded inputs (the final rounding), and between
# the two layouts of one device (the same arithmetic; only the order of the atomic additions differs).
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}
SAME = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-13}


def feature_map(device, n=2, c=40, h=11, w=13, dtype=torch.float32, seed=0):
    """c = 40: more channels than a warp's 32 lanes and not a multiple of them."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g, dtype=torch.float64).to(dtype).to(device)


def rois_with_edge_cases(device, n=2, k=24, seed=1):
    """Random RoIs (feature-map stride 4: the map spans 52 x 44 image pixels) and edge cases."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(k, 2, generator=g, dtype=torch.float64) * torch.tensor([60.0, 50.0]) - 6
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * 30 + 1
    idx = torch.randint(0, n, (k, 1), generator=g).double()
    special = torch.tensor(
        [
            [0, -40.0, -30.0, -10.0, -6.0],  # wholly outside, above-left
            [n - 1, 70.0, 60.0, 110.0, 90.0],  # wholly outside, below-right
            [0, -20.0, 30.0, 20.0, 70.0],  # partly outside
            [n - 1, 20.0, 20.0, 20.0, 20.0],  # empty (zero size)
            [0, 30.0, 25.0, 12.0, 5.0],  # inverted
            [n - 1, -400.0, -300.0, 500.0, 400.0],  # huge: the adaptive grid is capped at 64 samples per bin
        ],
        dtype=torch.float64,
    )
    return torch.cat([torch.cat([idx, xy, xy + wh], 1), special]).to(device)


def assert_layout(t, channels_last):
    """Unambiguous checks (C > 1 and H * W > 1): a channels_last tensor is not also contiguous."""
    assert t.shape[1] > 1 and t.shape[2] * t.shape[3] > 1
    if channels_last:
        assert t.is_contiguous(memory_format=CL) and not t.is_contiguous(), t.stride()
    else:
        assert t.is_contiguous(), t.stride()


def pool_and_grad(x, rois, output_size, sampling_ratio, aligned, grad):
    x = x.detach().requires_grad_()
    out = resnest_cuda.roi_align(x, rois, output_size, 0.25, sampling_ratio, aligned)
    (gx,) = torch.autograd.grad(out, x, grad)
    return out, gx


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_channels_last_equals_contiguous(device, dtype, aligned, sampling_ratio):
    x = feature_map(device, dtype=dtype)
    rois = rois_with_edge_cases(device).float()
    g = torch.Generator().manual_seed(2)
    grad = torch.randn(rois.shape[0], x.shape[1], 3, 5, generator=g).to(dtype).to(device)
    out_c, gx_c = pool_and_grad(x, rois, (3, 5), sampling_ratio, aligned, grad)
    out_l, gx_l = pool_and_grad(x.contiguous(memory_format=CL), rois, (3, 5), sampling_ratio, aligned,
                                grad.contiguous(memory_format=CL))
    assert_layout(out_c, False), assert_layout(gx_c, False)
    assert_layout(out_l, True), assert_layout(gx_l, True)
    assert out_l.dtype == gx_l.dtype == dtype
    torch.testing.assert_close(out_l, out_c, rtol=SAME[dtype], atol=SAME[dtype])
    torch.testing.assert_close(gx_l, gx_c, rtol=4 * SAME[dtype], atol=4 * SAME[dtype])
    # Both against the fp32 reference on the same rounded input: neither may be zeros or garbage.
    x32 = x.double().cpu().requires_grad_()
    ref = reference.roi_align(x32, rois.double().cpu(), (3, 5), 0.25, sampling_ratio, aligned)
    (gref,) = torch.autograd.grad(ref, x32, grad.double().cpu())
    assert ref.abs().max() > 0.5 and gref.abs().max() > 0.5
    torch.testing.assert_close(out_l.double().cpu(), ref, rtol=TOL[dtype], atol=TOL[dtype])
    torch.testing.assert_close(gx_l.double().cpu(), gref, rtol=4 * TOL[dtype], atol=4 * TOL[dtype])
    # RoIs wholly outside the map pool to exactly 0.
    assert torch.equal(out_l[24:26], torch.zeros_like(out_l[24:26]))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("grad_layout", ["contiguous", "channels_last", "expanded"])
def test_gradient_layout_does_not_depend_on_the_incoming_gradient(device, grad_layout):
    x = feature_map(device).contiguous(memory_format=CL).requires_grad_()
    rois = rois_with_edge_cases(device).float()
    out = resnest_cuda.roi_align(x, rois, 4, 0.25, 0, True)
    grad = {"contiguous": torch.ones(out.shape, device=device), "expanded": torch.ones((), device=device).expand(
        out.shape), "channels_last": torch.ones(out.shape, device=device).contiguous(memory_format=CL)}[grad_layout]
    (gx,) = torch.autograd.grad(out, x, grad)
    assert_layout(gx, True)
    xc = x.detach().contiguous().requires_grad_()
    (want,) = torch.autograd.grad(resnest_cuda.roi_align(xc, rois, 4, 0.25, 0, True).sum(), xc)
    torch.testing.assert_close(gx, want, rtol=1e-6, atol=1e-6)
    assert want.abs().max() > 0.5


@pytest.mark.parametrize("device", devices())
def test_large_fixed_sampling_ratio_keeps_the_contract(device):
    """sampling_ratio above the shared-memory tap capacity (64) runs the one-thread-per-element kernels on CUDA;
    the output and gradient layouts are the same."""
    x = feature_map(device, c=3, h=6, w=7)
    rois = torch.tensor([[0.0, 1, 2, 20, 18], [1, -3, 0, 9, 30]], device=device)
    grad = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(3)).to(device)
    out_c, gx_c = pool_and_grad(x, rois, 2, 70, True, grad)
    out_l, gx_l = pool_and_grad(x.contiguous(memory_format=CL), rois, 2, 70, True, grad)
    assert_layout(out_l, True), assert_layout(gx_l, True)
    torch.testing.assert_close(out_l, out_c, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx_l, gx_c, rtol=1e-6, atol=1e-6)
    assert out_c.abs().max() > 0.1
    want = reference.roi_align(x.double().cpu(), rois.double().cpu(), 2, 0.25, 70, True)
    torch.testing.assert_close(out_c.double().cpu(), want, rtol=1e-4, atol=5e-5)  # 4900 samples summed in fp32


@pytest.mark.parametrize("device", devices())
def test_more_bins_than_one_grid(device, request):
    """11000 RoIs x 7 x 7 bins: above 65535 blocks x 8 bins, so the CUDA channel-fastest kernels loop over bins.
    The emulated kernels reach the same loops with 400 RoIs and grids capped at 16 blocks."""
    n, grid = 11000, contextlib.nullcontext()
    if is_emulated(request):
        n, grid = 400, emulation.settings(max_blocks=16)
    x = feature_map(device, c=2)
    g = torch.Generator().manual_seed(4)
    xy = torch.rand(n, 2, generator=g) * 50 - 2
    rois = torch.cat([torch.randint(0, 2, (n, 1), generator=g).float(), xy, xy + 1 + torch.rand(n, 2,
                      generator=g) * 20], 1).to(device)
    grad = torch.randn(n, 2, 7, 7, generator=g).to(device)
    with grid:
        out_c, gx_c = pool_and_grad(x, rois, 7, 2, True, grad)
        out_l, gx_l = pool_and_grad(x.contiguous(memory_format=CL), rois, 7, 2, True, grad)
    assert_layout(out_l, True), assert_layout(gx_l, True)
    torch.testing.assert_close(out_l, out_c, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx_l, gx_c, rtol=1e-5, atol=1e-4)  # 11000 RoIs' atomic sums, in another order
    tail = reference.roi_align(x.cpu(), rois[-40:].cpu(), 7, 0.25, 2, True)
    assert tail.abs().max() > 0.5
    torch.testing.assert_close(out_l[-40:].cpu(), tail)


@pytest.mark.parametrize("device", devices())
def test_empty_rois_channels_last(device):
    x = feature_map(device).contiguous(memory_format=CL).requires_grad_()
    out = resnest_cuda.roi_align(x, torch.empty(0, 5, device=device), (3, 4), 0.25)
    assert out.shape == (0, 40, 3, 4)
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert_layout(gx, True)
    assert torch.equal(gx, torch.zeros_like(gx))


@pytest.mark.parametrize("device", devices())
def test_non_finite_input_values(device):
    """inf and NaN in the map propagate the same way in both layouts (NaN where a tap reads them)."""
    x = feature_map(device)
    x[0, 3, 2, 4] = float("nan")
    x[1, 7, 5, 5] = float("inf")
    x[0, 39, 6, 1] = -float("inf")
    rois = rois_with_edge_cases(device).float()
    out_c = resnest_cuda.roi_align(x, rois, 3, 0.25, 0, True)
    out_l = resnest_cuda.roi_align(x.contiguous(memory_format=CL), rois, 3, 0.25, 0, True)
    assert not torch.isfinite(out_c).all()  # the non-finite values are read
    torch.testing.assert_close(out_l, out_c, rtol=1e-6, atol=1e-6, equal_nan=True)
    # The reference (interpolation matrices) also spreads NaN through zero weights; compare where both are finite.
    want = reference.roi_align(x.cpu(), rois.cpu(), 3, 0.25, 0, True)
    finite = torch.isfinite(want) & torch.isfinite(out_c.cpu())
    assert finite.float().mean() > 0.9
    torch.testing.assert_close(out_c.cpu()[finite], want[finite])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shape", [(2, 1, 9, 11), (2, 5, 1, 1)], ids=["one_channel", "1x1_map"])
def test_ambiguous_layouts_pool_like_contiguous(device, shape):
    """A map that is both contiguous and channels_last (C == 1, or a 1x1 map) decides no layout: contiguous."""
    x = feature_map(device, *shape).contiguous(memory_format=CL).requires_grad_()
    rois = rois_with_edge_cases(device).float()
    out = resnest_cuda.roi_align(x, rois, 2, 0.25, 0, True)
    assert out.is_contiguous()
    torch.testing.assert_close(out.cpu(), reference.roi_align(x.detach().cpu(), rois.cpu(), 2, 0.25, 0, True))
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert gx.shape == x.shape and gx.abs().sum() > 0


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("aligned", [True, False])
def test_gradcheck_channels_last_fp64(device, aligned):
    x = feature_map(device, c=3, h=6, w=7, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    rois = torch.tensor([[0, 1.0, 2, 15, 19], [1, -2, 3, 9, 12], [1, 4, 4, 30, 30]], dtype=torch.float64,
                        device=device)
    fn = lambda t: resnest_cuda.roi_align(t, rois, (2, 3), 0.25, 0, aligned)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("device", devices())
def test_opcheck_channels_last(device):
    x = feature_map(device, c=3, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    rois = rois_with_edge_cases(device, k=4)
    torch.library.opcheck(torch.ops.resnest_cuda.roi_align.default, (x, rois, 0.25, 3, 4, 0, True))
    grad = torch.randn(rois.shape[0], 3, 3, 4, dtype=torch.float64, device=device).contiguous(memory_format=CL)
    torch.library.opcheck(torch.ops.resnest_cuda.roi_align_backward.default,
                          (grad, rois, 0.25, 3, 4, 2, 3, 11, 13, 2, True, True))
    result = torch.ops.resnest_cuda.roi_align_backward(grad, rois, 0.25, 3, 4, 2, 3, 11, 13, 2, True, True)
    assert_layout(result, True)


# --------------------------------------------------------------------------------------------------------------
# Multi-level


def pyramid(device, dtype=torch.float32, channels=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, channels, -(-96 // s), -(-128 // s), generator=g, dtype=torch.float64).to(dtype).to(device)
            for s in STRIDES]


def pyramid_rois(device, k=40, seed=1):
    """RoIs of every level (4.5 to 735 px) plus an empty one and one outside the image."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.empty(k, 1).uniform_(1.5, 6.6, generator=g))
    ratio = torch.exp(torch.empty(k, 1).uniform_(-0.7, 0.7, generator=g))
    side = torch.cat([scale * ratio.sqrt(), scale / ratio.sqrt()], 1)
    xy = torch.rand(k, 2, generator=g) * torch.tensor([128.0, 96.0]) - 10
    idx = torch.randint(0, 2, (k, 1), generator=g).float()
    special = torch.tensor([[0, 30.0, 30.0, 30.0, 30.0], [1, 300.0, 200.0, 340.0, 260.0]])
    return torch.cat([torch.cat([idx, xy, xy + side], 1), special]).to(device)


def multi_pool_and_grad(features, rois, sampling_ratio, aligned, grad):
    features = [f.detach().requires_grad_() for f in features]
    out = resnest_cuda.multi_level_roi_align(features, rois, (3, 4), STRIDES, sampling_ratio=sampling_ratio,
                                             aligned=aligned)
    return out, torch.autograd.grad(out, features, grad)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_multi_level_channels_last_equals_contiguous(device, dtype, aligned, sampling_ratio):
    features = pyramid(device, dtype)
    rois = pyramid_rois(device)
    levels = reference.pyramid_levels(rois[:, 1:].cpu(), 4)
    assert set(levels.tolist()) == {0, 1, 2, 3}
    grad = torch.randn(rois.shape[0], 40, 3, 4, generator=torch.Generator().manual_seed(2)).to(dtype).to(device)
    out_c, g_c = multi_pool_and_grad(features, rois, sampling_ratio, aligned, grad)
    out_l, g_l = multi_pool_and_grad([f.contiguous(memory_format=CL) for f in features], rois, sampling_ratio,
                                     aligned, grad.contiguous(memory_format=CL))
    assert_layout(out_c, False), assert_layout(out_l, True)
    torch.testing.assert_close(out_l, out_c, rtol=SAME[dtype], atol=SAME[dtype])
    want = reference.multi_level_roi_align([f.double().cpu() for f in features], rois.cpu(), (3, 4), STRIDES,
                                           sampling_ratio=sampling_ratio, aligned=aligned)
    assert want.abs().max() > 0.5
    torch.testing.assert_close(out_l.double().cpu(), want, rtol=TOL[dtype], atol=TOL[dtype])
    for level, (gc, gl) in enumerate(zip(g_c, g_l)):
        assert_layout(gc, False), assert_layout(gl, True)
        assert gl.dtype == dtype
        torch.testing.assert_close(gl, gc, rtol=4 * SAME[dtype], atol=4 * SAME[dtype])
        assert gl.abs().max() > 0.1, level  # every level receives a gradient


@pytest.mark.parametrize("device", devices())
def test_multi_level_mixed_layouts(device):
    """Mixed levels: a contiguous output (some level is not channels_last), each gradient in its level's layout,
    values as for the all-contiguous pyramid."""
    features = pyramid(device)
    mixed = [f.contiguous(memory_format=CL) if i % 2 else f for i, f in enumerate(features)]
    rois = pyramid_rois(device)
    grad = torch.randn(rois.shape[0], 40, 3, 4, generator=torch.Generator().manual_seed(3)).to(device)
    out_c, g_c = multi_pool_and_grad(features, rois, 0, True, grad)
    out_m, g_m = multi_pool_and_grad(mixed, rois, 0, True, grad)
    assert_layout(out_m, False)
    torch.testing.assert_close(out_m, out_c, rtol=1e-6, atol=1e-6)
    for i, (gc, gm) in enumerate(zip(g_c, g_m)):
        assert_layout(gm, i % 2 == 1)
        torch.testing.assert_close(gm, gc, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", devices())
def test_multi_level_empty_rois_channels_last(device):
    features = [f.contiguous(memory_format=CL).requires_grad_() for f in pyramid(device)]
    out = resnest_cuda.multi_level_roi_align(features, torch.empty(0, 5, device=device), 7, STRIDES)
    assert out.shape == (0, 40, 7, 7)
    for g in torch.autograd.grad(out.sum(), features):
        assert_layout(g, True)
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("device", devices())
def test_multi_level_gradcheck_and_opcheck_channels_last_fp64(device):
    features = [f.contiguous(memory_format=CL).requires_grad_()
                for f in pyramid(device, torch.float64, channels=2)]
    rois = torch.tensor([[0, 1.0, 2, 9, 13], [1, 0, 0, 127, 95], [0, 3, 1, 60, 40]], dtype=torch.float64,
                        device=device)

    def fn(*feats):
        return resnest_cuda.multi_level_roi_align(list(feats), rois, 2, STRIDES, finest_scale=8.0, sampling_ratio=2)

    assert torch.autograd.gradcheck(fn, features)
    torch.library.opcheck(torch.ops.resnest_cuda.multi_level_roi_align.default,
                          (features, rois, [1.0 / s for s in STRIDES], 2, 2, 8.0, 2, True))
    grad = torch.randn(3, 2, 2, 2, dtype=torch.float64, device=device)
    args = (grad, rois, [1.0 / s for s in STRIDES], 2, 2, 2, 2, [f.shape[2] for f in features],
            [f.shape[3] for f in features], 8.0, 2, True, [True, False, True, False])
    torch.library.opcheck(torch.ops.resnest_cuda.multi_level_roi_align_backward.default, args)
    for i, g in enumerate(torch.ops.resnest_cuda.multi_level_roi_align_backward(*args)):
        assert_layout(g, i % 2 == 0)


def test_multi_level_backward_refuses_a_wrong_number_of_layout_flags():
    grad, rois = torch.zeros(1, 2, 2, 2), torch.tensor([[0, 1.0, 2, 9, 13]])
    with pytest.raises(ValueError, match="channels_last needs one flag per level"):
        torch.ops.resnest_cuda.multi_level_roi_align_backward(grad, rois, [0.25, 0.125], 2, 2, 1, 2, [8, 4], [8, 4],
                                                              56.0, 0, True, [True])
