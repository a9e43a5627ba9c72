"""RoIAlign kernels against the pure-PyTorch reference (SPEC §6)."""

import pytest
import torch

import resnest_cuda
from resnest_cuda import reference

from .helpers import requires_cuda

IMAGE_H, IMAGE_W, STRIDE = 52, 68, 4  # feature map 13 x 17 at spatial_scale 1/4


def make_rois(num: int, batch: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Random ROIs plus hand-picked edge cases: partly and wholly outside the map, tiny, huge, empty, inverted."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=g, dtype=torch.float64) * torch.tensor([IMAGE_W, IMAGE_H]) * 1.2 - 8
    wh = torch.rand(num, 2, generator=g, dtype=torch.float64) * 40
    idx = torch.randint(0, batch, (num, 1), generator=g).double()
    special = torch.tensor(
        [
            [0, -30.0, -20.0, -5.0, -3.0],  # wholly outside, above-left
            [batch - 1, 80.0, 60.0, 120.0, 90.0],  # wholly outside, below-right
            [0, 10.3, 11.7, 10.5, 11.9],  # tiny
            [batch - 1, -150.0, -90.0, 260.0, 230.0],  # huge, covers the map
            [0, 20.0, 20.0, 20.0, 20.0],  # empty
            [batch - 1, 30.0, 25.0, 12.0, 5.0],  # inverted (x2 < x1)
            [0, -6.1, 40.2, 30.3, 70.0],  # partly outside, bottom-left
        ],
        dtype=torch.float64,
    )
    return torch.cat([torch.cat([idx, xy, xy + wh], dim=1), special]).to(dtype)


def make_input(batch: int, channels: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, channels, IMAGE_H // STRIDE, IMAGE_W // STRIDE)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("output_size", [7, (3, 5)])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_reference(dtype, sampling_ratio, aligned, output_size):
    x = make_input(3, 4, seed=1, dtype=dtype)
    rois = make_rois(12, 3, seed=2, dtype=dtype)
    out = resnest_cuda.roi_align(x, rois, output_size, 1 / STRIDE, sampling_ratio, aligned)
    ref = reference.roi_align(x, rois, output_size, 1 / STRIDE, sampling_ratio, aligned)
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    assert out.shape == (rois.shape[0], 4, ph, pw) and out.dtype == dtype and out.is_contiguous()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    # Wholly-outside ROIs pool to exactly 0. Empty and inverted ones get no samples when aligned with adaptive
    # sampling (grid = ceil(size) <= 0); with a fixed sampling_ratio they are still sampled, and legacy mode
    # forces them to 1x1.
    assert out[12:14].abs().max() == 0
    assert (out[16:18].abs().max() == 0) == (aligned and sampling_ratio == 0)
    assert out[15].abs().max() > 0


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_backward_matches_reference(sampling_ratio, aligned):
    x = make_input(3, 4, seed=3).requires_grad_()
    rois = make_rois(12, 3, seed=4)
    grad = torch.randn(rois.shape[0], 4, 3, 5, dtype=torch.float64)
    (gx,) = torch.autograd.grad(resnest_cuda.roi_align(x, rois, (3, 5), 1 / STRIDE, sampling_ratio, aligned), x, grad)
    (gr,) = torch.autograd.grad(reference.roi_align(x, rois, (3, 5), 1 / STRIDE, sampling_ratio, aligned), x, grad)
    torch.testing.assert_close(gx, gr, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_low_precision(dtype, tol):
    x = make_input(2, 3, seed=5, dtype=dtype).requires_grad_()
    rois = make_rois(10, 2, seed=6, dtype=torch.float32)
    out = resnest_cuda.roi_align(x, rois, 7, 1 / STRIDE, 0, True)
    assert out.dtype == dtype
    # The reference runs in fp32 on the same (rounded) inputs; the only extra error is the final rounding.
    x32 = x.detach().float().requires_grad_()
    ref = reference.roi_align(x32, rois, 7, 1 / STRIDE, 0, True)
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    grad = torch.randn(out.shape).to(dtype)
    (gx,) = torch.autograd.grad(out, x, grad)
    (gr,) = torch.autograd.grad(ref, x32, grad.float())
    assert gx.dtype == dtype
    torch.testing.assert_close(gx.float(), gr, rtol=tol, atol=tol)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_memory_layouts(layout):
    x = make_input(2, 6, seed=7, dtype=torch.float32)
    if layout == "channels_last":
        xl = x.contiguous(memory_format=torch.channels_last)
    else:
        xl = torch.stack([x, -x], dim=-1).flatten(-2)[..., ::2]  # every other column: W stride 2
        assert not xl.is_contiguous()
    rois = make_rois(9, 2, seed=8, dtype=torch.float32)
    out = resnest_cuda.roi_align(xl, rois, (3, 5), 1 / STRIDE, 2, True)
    # A channels_last input pools to a channels_last output; a strided view to a contiguous one.
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    else:
        assert out.is_contiguous()
    torch.testing.assert_close(out, resnest_cuda.roi_align(x, rois, (3, 5), 1 / STRIDE, 2, True), rtol=0, atol=0)
    xl.requires_grad_()
    grad = torch.randn(out.shape)
    (gx,) = torch.autograd.grad(resnest_cuda.roi_align(xl, rois, (3, 5), 1 / STRIDE, 2, True), xl, grad)
    (gr,) = torch.autograd.grad(reference.roi_align(xl, rois, (3, 5), 1 / STRIDE, 2, True), xl, grad)
    torch.testing.assert_close(gx, gr, rtol=1e-5, atol=1e-5)


def test_hand_computed():
    # 2x2 map [[1, 2], [3, 4]]; one sample per bin (sampling_ratio 1, output 1).
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    roi = torch.tensor([[0.0, 0.5, 0.5, 1.5, 1.5]])
    # aligned: start = 0.5 - 0.5 = 0, size 1, sample at (0.5, 0.5): mean of the four pixels.
    assert resnest_cuda.roi_align(x, roi, 1, 1.0, 1, True).item() == pytest.approx(2.5)
    # legacy: start 0.5, sample at (1, 1): the last row/column, pixel 4.
    assert resnest_cuda.roi_align(x, roi, 1, 1.0, 1, False).item() == pytest.approx(4.0)
    # 2x2 samples at 0.25 and 0.75: bilinear interpolation is linear, so the mean is still 2.5.
    assert resnest_cuda.roi_align(x, roi, 1, 1.0, 2, True).item() == pytest.approx(2.5)
    # A ROI reaching past the map: start (0, 0), 4 wide, 1 high; x samples at 1 and 3, y samples at 0.25, 0.75.
    # x = 1 is the last column (2 and 4 mix to 2.5 and 3.5); x = 3 > W contributes 0 but still counts.
    far = torch.tensor([[0.0, 0.5, 0.5, 4.5, 1.5]])
    assert resnest_cuda.roi_align(x, far, 1, 1.0, 2, True).item() == pytest.approx((2.5 + 3.5 + 0 + 0) / 4)


@pytest.mark.parametrize("sampling_ratio, aligned", [(0, True), (2, False)])
def test_gradcheck(sampling_ratio, aligned):
    x = make_input(2, 2, seed=9)[:, :, :6, :7].contiguous().requires_grad_()
    g = torch.Generator().manual_seed(10)
    xy = torch.rand(4, 2, generator=g, dtype=torch.float64) * 20 - 2
    rois = torch.cat([torch.tensor([[0.0], [1.0], [1.0], [0.0]], dtype=torch.float64), xy, xy + 6], dim=1)
    fn = lambda t: resnest_cuda.roi_align(t, rois, (2, 3), 0.25, sampling_ratio, aligned)
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)


def test_opcheck():
    x = make_input(2, 3, seed=11).requires_grad_()
    rois = make_rois(5, 2, seed=12)
    torch.library.opcheck(torch.ops.resnest_cuda.roi_align.default, (x, rois, 0.25, 3, 4, 2, True))
    grad = torch.randn(rois.shape[0], 3, 3, 4, dtype=torch.float64)
    torch.library.opcheck(
        torch.ops.resnest_cuda.roi_align_backward.default, (grad, rois, 0.25, 3, 4, 2, 3, 13, 17, 0, False)
    )


def test_torch_compile():
    x = make_input(2, 3, seed=13, dtype=torch.float32)
    rois = make_rois(6, 2, seed=14, dtype=torch.float32)

    def pool_and_square(feats, boxes):
        return resnest_cuda.roi_align(feats, boxes, 3, 1 / STRIDE, 0, True).square()

    compiled = torch.compile(pool_and_square, fullgraph=True)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_c, out_e = compiled(xc, rois), pool_and_square(xe, rois)
    torch.testing.assert_close(out_c, out_e)
    out_c.sum().backward()
    out_e.sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad)


def test_empty_rois():
    x = make_input(2, 3, seed=15, dtype=torch.float32).requires_grad_()
    rois = torch.empty(0, 5)
    out = resnest_cuda.roi_align(x, rois, (3, 4), 0.25)
    assert out.shape == (0, 3, 3, 4)
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert gx.shape == x.shape and gx.abs().max() == 0


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_nan_coordinates_pool_to_zero(sampling_ratio, aligned):
    x = make_input(1, 2, seed=16, dtype=torch.float32)
    rois = torch.tensor([[0.0, float("nan"), 3.0, 20.0, 30.0], [0.0, 2.0, 3.0, 20.0, float("nan")], [0, 2, 3, 20, 30]])
    out = resnest_cuda.roi_align(x, rois, 3, 1 / STRIDE, sampling_ratio, aligned)
    # A ROI with a NaN coordinate pools to 0 in both modes (legacy mode's size clamp does not revive it).
    assert out[0].abs().max() == 0 and torch.isfinite(out).all()
    assert out[1].abs().max() == 0 and out[2].abs().max() > 0


BAD_INPUTS = [
    (dict(input=torch.zeros(3, 8, 8)), ValueError, "input"),
    (dict(input=torch.zeros(1, 3, 8, 8, dtype=torch.int32)), TypeError, "input"),
    (dict(input=[[1.0]]), TypeError, "input"),
    (dict(rois=torch.zeros(2, 4)), ValueError, "rois"),
    (dict(rois=torch.zeros(2, 5, dtype=torch.int64)), TypeError, "rois"),
    (dict(rois=torch.zeros(2, 5, device="meta")), ValueError, "rois"),
    (dict(output_size=0), ValueError, "output_size"),
    (dict(output_size=(7,)), TypeError, "output_size"),
    (dict(output_size=2.5), TypeError, "output_size"),
    (dict(spatial_scale=0.0), ValueError, "spatial_scale"),
    (dict(sampling_ratio=1.5), TypeError, "sampling_ratio"),
    (dict(aligned=1), TypeError, "aligned"),
]


@pytest.mark.parametrize("override, error, match", BAD_INPUTS)
def test_bad_inputs(override, error, match):
    args = dict(
        input=torch.zeros(2, 3, 8, 8),
        rois=torch.tensor([[1.0, 0, 0, 4, 4]]),
        output_size=2,
        spatial_scale=1.0,
        sampling_ratio=0,
        aligned=True,
    )
    args.update(override)
    with pytest.raises(error, match=match):
        resnest_cuda.roi_align(**args)


@requires_cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("aligned", [True, False])
def test_cuda_matches_cpu(dtype, tol, aligned):
    x = make_input(3, 5, seed=16, dtype=torch.float32).requires_grad_()
    rois = make_rois(40, 3, seed=17, dtype=torch.float32)
    out = resnest_cuda.roi_align(x, rois, 7, 1 / STRIDE, 0, aligned)
    grad = torch.randn(out.shape)
    (gx,) = torch.autograd.grad(out, x, grad)
    xd = x.detach().cuda().to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    out_d = resnest_cuda.roi_align(xd, rois.cuda(), 7, 1 / STRIDE, 0, aligned)
    assert out_d.dtype == dtype
    (gxd,) = torch.autograd.grad(out_d, xd, grad.cuda().to(dtype))
    torch.testing.assert_close(out_d.float().cpu(), out, rtol=tol, atol=tol)
    torch.testing.assert_close(gxd.float().cpu(), gx, rtol=tol * 4, atol=tol * 4)


@requires_cuda
def test_cuda_matches_torchvision():
    torchvision = pytest.importorskip("torchvision")
    x = make_input(3, 5, seed=18, dtype=torch.float32).cuda()
    rois = make_rois(40, 3, seed=19, dtype=torch.float32).cuda()
    for sampling_ratio in (0, 2):
        for aligned in (True, False):
            ours = resnest_cuda.roi_align(x, rois, (3, 5), 1 / STRIDE, sampling_ratio, aligned)
            theirs = torchvision.ops.roi_align(x, rois, (3, 5), 1 / STRIDE, sampling_ratio, aligned)
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
