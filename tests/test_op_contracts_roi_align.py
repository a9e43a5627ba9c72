"""RoIAlign contracts: non-finite and huge ROIs, out-of-range batch indices, double backward, retained graphs,
gradient layouts and determinism, the same on every device (CUDA cases skip without a GPU)."""

import math

import pytest
import torch

import resnest_cuda
from resnest_cuda import reference
from resnest_cuda.reference.detection_ops import MAX_ADAPTIVE_GRID
from tests.helpers import requires_cuda

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
NONFINITE = [math.inf, -math.inf, math.nan]


def feature_map(device, n=2, c=3, h=9, w=11, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


GOOD_ROI = [1.0, 1.5, 2.0, 7.0, 6.5]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("value", NONFINITE, ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("coord", [1, 2, 3, 4], ids=["x1", "y1", "x2", "y2"])
def test_non_finite_roi_pools_to_zero(device, aligned, sampling_ratio, value, coord):
    """A ROI with one non-finite coordinate pools to exactly 0 and gets no gradient; the finite ROI next to it is
    pooled as the reference pools it (so a kernel returning zeros everywhere fails)."""
    x = feature_map(device).requires_grad_()
    bad = list(GOOD_ROI)
    bad[coord] = value
    rois = torch.tensor([GOOD_ROI, bad], dtype=torch.float64, device=device)
    out = resnest_cuda.roi_align(x, rois, (3, 2), 0.5, sampling_ratio, aligned)
    ref = reference.roi_align(x.detach(), rois, (3, 2), 0.5, sampling_ratio, aligned)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert out[0].abs().sum() > 0
    torch.testing.assert_close(out, ref)
    (grad,) = torch.autograd.grad(out, x, torch.cat([torch.zeros_like(out[:1]), torch.ones_like(out[1:])]))
    assert torch.equal(grad, torch.zeros_like(grad))  # only the non-finite ROI received a gradient: none


@pytest.mark.parametrize("device", DEVICES)
def test_adaptive_grid_cap(device):
    """sampling_ratio <= 0 uses ceil(bin) samples up to MAX_ADAPTIVE_GRID and MAX_ADAPTIVE_GRID beyond: a 60-px bin
    equals sampling_ratio=60, a 200-px bin equals sampling_ratio=64 (and differs from 200)."""
    x = feature_map(device, h=8, w=8)
    small = torch.tensor([[0.0, 0.0, 0.0, 60.0, 60.0]], dtype=torch.float64, device=device)
    big = torch.tensor([[0.0, 0.0, 0.0, 200.0, 200.0]], dtype=torch.float64, device=device)
    for rois, explicit in [(small, 60), (big, MAX_ADAPTIVE_GRID)]:
        adaptive = resnest_cuda.roi_align(x, rois, 1, 1.0, 0, True)
        torch.testing.assert_close(adaptive, resnest_cuda.roi_align(x, rois, 1, 1.0, explicit, True))
        torch.testing.assert_close(adaptive, reference.roi_align(x, rois, 1, 1.0, 0, True))
        assert adaptive.abs().sum() > 0
    uncapped = resnest_cuda.roi_align(x, big, 1, 1.0, 200, True)
    assert not torch.allclose(resnest_cuda.roi_align(x, big, 1, 1.0, 0, True), uncapped)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_roi_is_bounded_and_matches_reference(device, dtype):
    """1e8-pixel ROIs (the capped grid keeps them fast; see benchmarks/bench_roi_align_limits.py for the time)."""
    x = feature_map(device, dtype=dtype).requires_grad_()
    rois = torch.tensor(
        [[0, -1e8, -1e8, 1e8, 1e8], [1, 0, 0, 1e8, 1e8], [0, 2, 3, 1e8, 6]], dtype=dtype, device=device
    )
    out = resnest_cuda.roi_align(x, rois, 7, 1.0, 0, True)
    torch.testing.assert_close(out, reference.roi_align(x.detach(), rois, 7, 1.0, 0, True))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", [2.0, 7.0, -1.0, -0.5, math.nan], ids=["N", "7", "-1", "-0.5", "nan"])
def test_out_of_range_batch_index_pools_to_zero(device, index):
    """The same on every device and in the reference: such a ROI pools to 0 and gets no gradient (no error and no
    host synchronisation to check the indices)."""
    x = feature_map(device).requires_grad_()
    rois = torch.tensor([GOOD_ROI, [index, *GOOD_ROI[1:]]], dtype=torch.float64, device=device)
    out = resnest_cuda.roi_align(x, rois, 2, 1.0, 0, True)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and out[0].abs().sum() > 0
    torch.testing.assert_close(out, reference.roi_align(x.detach(), rois, 2, 1.0, 0, True))
    (grad,) = torch.autograd.grad(out[1].sum(), x)
    assert torch.equal(grad, torch.zeros_like(grad))


def _rois(device, k=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(k, 2, generator=g, dtype=torch.float64) * 6
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * 5 + 0.5
    batch = torch.arange(k, dtype=torch.float64)[:, None] % 2
    return torch.cat([batch, xy, xy + wh], dim=1).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aligned", [True, False])
def test_gradgradcheck(device, aligned):
    x = feature_map(device, n=2, c=2, h=6, w=7).requires_grad_()
    rois = _rois(device)
    fn = lambda t: resnest_cuda.roi_align(t, rois, 2, 1.0, 0, aligned)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_retain_graph_second_backward(device):
    x = feature_map(device).requires_grad_()
    out = resnest_cuda.roi_align(x, _rois(device), 3, 1.0, 0, True)
    out.square().sum().backward(retain_graph=True)
    first = x.grad.clone()
    out.square().sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("input_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("grad_layout", ["contiguous", "channels_last"])
def test_gradient_has_the_layout_of_the_input(device, input_layout, grad_layout):
    x = feature_map(device).contiguous(memory_format=FORMATS[input_layout]).requires_grad_()
    rois = _rois(device)
    out = resnest_cuda.roi_align(x, rois, 3, 1.0, 0, True)
    g = torch.randn(out.shape, dtype=out.dtype, device=device).contiguous(memory_format=FORMATS[grad_layout])
    (grad,) = torch.autograd.grad(out, x, g)
    assert grad.is_contiguous(memory_format=FORMATS[input_layout])
    xr = x.detach().contiguous().requires_grad_()
    (expected,) = torch.autograd.grad(reference.roi_align(xr, rois, 3, 1.0, 0, True), xr, g)
    torch.testing.assert_close(grad, expected)


@requires_cuda
def test_cuda_backward_alerts_under_deterministic_algorithms():
    x = feature_map("cuda", dtype=torch.float32).requires_grad_()
    out = resnest_cuda.roi_align(x, _rois("cuda").float(), 2, 1.0, 0, True)
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        with pytest.raises(RuntimeError, match="roi_align_backward_cuda"):
            out.sum().backward(retain_graph=True)
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="roi_align_backward_cuda"):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def test_cpu_backward_is_deterministic_and_allowed():
    x = feature_map("cpu").requires_grad_()
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        grads = [torch.autograd.grad(resnest_cuda.roi_align(x, _rois("cpu"), 2).sum(), x)[0] for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    assert torch.equal(grads[0], grads[1])
