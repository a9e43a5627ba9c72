"""NMS with `max_keep` and the fixed-size NMS (`nms_fixed`, `batched_nms_fixed`) against the reference: the same
kept prefix as the unlimited NMS, padding and validity, dtypes, empty input, ties, opcheck and torch.compile."""

import pytest
import torch

import resnest_cuda
from resnest_cuda import reference

from .helpers import devices, requires_cuda
from .test_nms import clustered_boxes

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_keep_is_a_prefix_of_the_full_result(device, dtype):
    boxes, scores = clustered_boxes(150, seed=1, integer=True, dtype=dtype)
    boxes, scores = boxes.to(device), scores.to(device)
    full = resnest_cuda.nms(boxes, scores, 0.5)
    assert torch.equal(full.cpu(), reference.nms(boxes.cpu(), scores.cpu(), 0.5))
    assert 5 < len(full) < 150
    for k in (0, 1, 2, 5, len(full) - 1, len(full), len(full) + 7, 1000):
        keep = resnest_cuda.nms(boxes, scores, 0.5, max_keep=k)
        assert keep.dtype == torch.int64 and keep.device == boxes.device
        assert torch.equal(keep, full[:k]), k
        assert torch.equal(keep.cpu(), reference.nms(boxes.cpu(), scores.cpu(), 0.5, max_keep=k))
    assert torch.equal(resnest_cuda.nms(boxes, scores, 0.5, max_keep=-1), full)


@pytest.mark.parametrize("device", devices())
def test_batched_max_keep_is_a_prefix(device):
    boxes, scores = clustered_boxes(200, seed=11)
    idxs = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(2))
    full = reference.batched_nms(boxes, scores, idxs, 0.5)
    boxes, scores, idxs = boxes.to(device), scores.to(device), idxs.to(device)
    for k in (0, 1, 10, len(full), len(full) + 3):
        keep = resnest_cuda.batched_nms(boxes, scores, idxs, 0.5, max_keep=k)
        assert torch.equal(keep.cpu(), full[:k])
        assert torch.equal(keep.cpu(), reference.batched_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), 0.5, k))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_fixed_pads_the_kept_indices(device, dtype):
    boxes, scores = clustered_boxes(120, seed=3, integer=True, dtype=dtype)
    boxes, scores = boxes.to(device), scores.to(device)
    full = resnest_cuda.nms(boxes, scores, 0.6)
    for k in (0, 1, 4, len(full), len(full) + 9):  # fewer kept than max_keep in the last case
        keep, valid = resnest_cuda.nms_fixed(boxes, scores, 0.6, k)
        assert keep.shape == (k,) and valid.shape == (k,)
        assert keep.dtype == torch.int64 and valid.dtype == torch.bool and keep.device == boxes.device
        n = min(k, len(full))
        assert valid.tolist() == [True] * n + [False] * (k - n)
        assert torch.equal(keep[:n], full[:n])
        assert torch.all(keep[n:] == 0)
        ref_keep, ref_valid = reference.nms_fixed(boxes.cpu(), scores.cpu(), 0.6, k)
        assert torch.equal(keep.cpu(), ref_keep) and torch.equal(valid.cpu(), ref_valid)


@pytest.mark.parametrize("device", devices())
def test_batched_nms_fixed_matches_reference(device):
    boxes, scores = clustered_boxes(200, seed=12)
    idxs = torch.randint(0, 5, (200,), generator=torch.Generator().manual_seed(3))
    for k in (3, 50, 400):
        ref = reference.batched_nms_fixed(boxes, scores, idxs, 0.5, k)
        out = resnest_cuda.batched_nms_fixed(boxes.to(device), scores.to(device), idxs.to(device), 0.5, k)
        assert torch.equal(out[0].cpu(), ref[0]) and torch.equal(out[1].cpu(), ref[1])
    assert int(ref[1].sum()) < 400  # the last case is padded


@pytest.mark.parametrize("device", devices())
def test_empty_input(device):
    empty_boxes, empty_scores = torch.empty(0, 4, device=device), torch.empty(0, device=device)
    keep, valid = resnest_cuda.nms_fixed(empty_boxes, empty_scores, 0.5, 4)
    assert keep.tolist() == [0, 0, 0, 0] and valid.tolist() == [False] * 4
    keep, valid = resnest_cuda.batched_nms_fixed(empty_boxes, empty_scores, torch.empty(0, dtype=torch.long,
                                                                                        device=device), 0.5, 3)
    assert keep.shape == (3,) and not valid.any()
    assert resnest_cuda.nms(empty_boxes, empty_scores, 0.5, max_keep=3).shape == (0,)
    keep, valid = resnest_cuda.nms_fixed(torch.ones(2, 4, device=device), torch.ones(2, device=device), 0.5, 0)
    assert keep.shape == (0,) and valid.shape == (0,)


@pytest.mark.parametrize("device", devices())
def test_ties_and_hand_computed(device):
    # Identical boxes, equal scores: the lowest index wins; IoU exactly 0.5 is not > 0.5.
    boxes = torch.tensor([[5.0, 5, 15, 25]]).repeat(4, 1).to(device)
    keep, valid = resnest_cuda.nms_fixed(boxes, torch.full((4,), 0.5, device=device), 0.5, 3)
    assert keep.tolist() == [0, 0, 0] and valid.tolist() == [True, False, False]
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95], device=device)
    keep, valid = resnest_cuda.nms_fixed(boxes, scores, 0.5, 4)  # full result [3, 0, 2]
    assert keep.tolist() == [3, 0, 2, 0] and valid.tolist() == [True, True, True, False]
    assert resnest_cuda.nms(boxes, scores, 0.5, max_keep=2).tolist() == [3, 0]
    keep, valid = resnest_cuda.nms_fixed(boxes, scores, 0.7, 2)  # full result [3, 0, 1, 2]
    assert keep.tolist() == [3, 0] and valid.tolist() == [True, True]


@pytest.mark.parametrize("device", devices())
def test_opcheck(device):
    boxes, scores = clustered_boxes(40, seed=4)
    boxes, scores = boxes.to(device), scores.to(device)
    torch.library.opcheck(torch.ops.resnest_cuda.nms.default, (boxes, scores, 0.5, 7))
    torch.library.opcheck(torch.ops.resnest_cuda.nms_fixed.default, (boxes, scores, 0.5, 7))
    torch.library.opcheck(torch.ops.resnest_cuda.nms_fixed.default, (boxes, scores, 0.5, 100))


def test_fake_kernel_has_no_unbacked_sizes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        boxes, scores = mode.from_tensor(torch.zeros(10, 4)), mode.from_tensor(torch.zeros(10))
        keep, valid = torch.ops.resnest_cuda.nms_fixed(boxes, scores, 0.5, 6)
    assert keep.shape == (6,) and valid.shape == (6,)
    assert all(isinstance(s, int) for s in (*keep.shape, *valid.shape))


@pytest.mark.parametrize("device", devices())
def test_torch_compile_fullgraph(device):
    def top_boxes(boxes, scores):
        keep, valid = resnest_cuda.nms_fixed(boxes, scores, 0.5, 8)
        return boxes[keep] * valid[:, None], scores[keep].masked_fill(~valid, 0.0)

    boxes, scores = clustered_boxes(60, seed=5)
    boxes, scores = boxes.to(device), scores.to(device)
    torch._dynamo.reset()
    compiled = torch.compile(top_boxes, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(boxes, scores), top_boxes(boxes, scores)):
        assert torch.equal(got, want)
    # A different number of boxes still gives max_keep entries (no recompilation needed for the output size).
    b2, s2 = clustered_boxes(35, seed=6)
    out = compiled(b2.to(device), s2.to(device))
    assert out[0].shape == (8, 4)


@pytest.mark.parametrize(
    "fn, max_keep, error",
    [
        (resnest_cuda.nms, -2, ValueError),
        (resnest_cuda.nms, 2.0, TypeError),
        (resnest_cuda.nms, True, TypeError),
        (resnest_cuda.nms_fixed, -1, ValueError),
        (resnest_cuda.nms_fixed, None, TypeError),
    ],
)
def test_bad_max_keep(fn, max_keep, error):
    with pytest.raises(error, match="max_keep"):
        fn(torch.zeros(3, 4), torch.zeros(3), 0.5, max_keep)
    # the raw op applies the same rule, with the same error
    with pytest.raises(ValueError, match=r"^nms_fixed: max_keep must be >= 0, got -3$"):
        torch.ops.resnest_cuda.nms_fixed(torch.zeros(3, 4), torch.zeros(3), 0.5, -3)
    with pytest.raises(ValueError, match=r"^nms_fixed: max_keep must be >= 0, got -3$"):
        resnest_cuda.nms_fixed(torch.zeros(3, 4), torch.zeros(3), 0.5, -3)


def test_batched_fixed_bad_idxs():
    with pytest.raises(TypeError, match="idxs"):
        resnest_cuda.batched_nms_fixed(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5, 2)


@requires_cuda
def test_cuda_max_keep_many_tiles_matches_cpu():
    # Several 64-box tiles, the stop in the middle of a tile and at a tile boundary.
    boxes, scores = clustered_boxes(700, seed=7, integer=False)
    full = resnest_cuda.nms(boxes, scores, 0.7)
    for k in (1, 63, 64, 65, 130, len(full)):
        keep, valid = resnest_cuda.nms_fixed(boxes.cuda(), scores.cuda(), 0.7, k)
        n = min(k, len(full))
        assert torch.equal(keep[:n].cpu(), full[:n]) and int(valid.sum()) == n
        assert torch.equal(resnest_cuda.nms(boxes.cuda(), scores.cuda(), 0.7, k).cpu(), full[:k])


@requires_cuda
def test_cuda_matches_torchvision_topk():
    torchvision = pytest.importorskip("torchvision")
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(3000, 2, generator=g) * 500
    boxes = torch.cat([xy, xy + 10 + torch.rand(3000, 2, generator=g) * 100], dim=1).cuda()
    scores = torch.rand(3000, generator=g).cuda()
    for k in (10, 100, 1000):
        want = torchvision.ops.nms(boxes, scores, 0.7)[:k]
        assert torch.equal(resnest_cuda.nms(boxes, scores, 0.7, k), want)
        keep, valid = resnest_cuda.nms_fixed(boxes, scores, 0.7, k)
        assert torch.equal(keep[valid], want)
