"""NMS and batched NMS kernels against the greedy pure-PyTorch reference (SPEC §6)."""

import pytest
import torch

import resnest_cuda
from resnest_cuda import reference

from .helpers import requires_cuda


def clustered_boxes(n: int, seed: int, integer: bool = True, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes jittered around a few centres (many overlaps) and scores from 6 levels (many ties)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(6, 2, generator=g) * 80
    xy = centres[torch.randint(0, 6, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 4
    wh = 8 + torch.rand(n, 2, generator=g) * 20
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
    if integer:
        # Integer coordinates: IoUs are exact ratios, some exactly at a threshold, and the batched offset is exact.
        boxes = boxes.round()
    scores = torch.randint(0, 6, (n,), generator=g).float() / 5
    return boxes.to(dtype), scores.to(dtype)


@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("integer", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_matches_reference(dtype, integer, iou_threshold):
    for seed in range(3):
        boxes, scores = clustered_boxes(150, seed, integer, dtype)
        keep = resnest_cuda.nms(boxes, scores, iou_threshold)
        assert keep.dtype == torch.int64
        assert torch.equal(keep, reference.nms(boxes, scores, iou_threshold))
        assert len(keep) < len(boxes)  # the clusters overlap, so something was suppressed
        assert torch.all(scores[keep][:-1] >= scores[keep][1:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nms_low_precision(dtype):
    boxes, scores = clustered_boxes(120, seed=3, integer=True, dtype=dtype)
    assert torch.equal(resnest_cuda.nms(boxes, scores, 0.5), reference.nms(boxes, scores, 0.5))


@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_batched_nms_matches_reference(iou_threshold):
    for seed in range(3):
        boxes, scores = clustered_boxes(200, seed + 10)
        idxs = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(seed))
        keep = resnest_cuda.batched_nms(boxes, scores, idxs, iou_threshold)
        assert torch.equal(keep, reference.batched_nms(boxes, scores, idxs, iou_threshold))
        assert len(keep) > len(resnest_cuda.nms(boxes, scores, iou_threshold))  # classes kept apart


def test_batched_nms_negative_coordinates():
    # Boxes below -1 would let the classes overlap with an offset of idx * (max + 1); they must stay apart.
    boxes = torch.tensor([[-50.0, -50.0, -10.0, -10.0], [-50.0, -50.0, -10.0, -10.0], [0.0, 0.0, 2.0, 2.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep = resnest_cuda.batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5)
    assert keep.tolist() == [0, 1, 2]
    assert torch.equal(keep, reference.batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5))


def test_hand_computed():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # IoU(3, 0) = 50 / 100 = 0.5 exactly, IoU(0, 1) = 81 / 119 = 0.68, IoU(3, 1) = 36 / 114 = 0.32; box 2 is apart.
    assert resnest_cuda.nms(boxes, scores, 0.5).tolist() == [3, 0, 2]  # 0.5 is not > 0.5: box 0 stays
    assert resnest_cuda.nms(boxes, scores, 0.3).tolist() == [3, 2]
    assert resnest_cuda.nms(boxes, scores, 0.7).tolist() == [3, 0, 1, 2]
    assert resnest_cuda.batched_nms(boxes, scores, torch.tensor([0, 0, 0, 1]), 0.3).tolist() == [3, 0, 2]


def test_empty_and_single():
    for fn in (resnest_cuda.nms, reference.nms):
        keep = fn(torch.empty(0, 4), torch.empty(0), 0.5)
        assert keep.shape == (0,) and keep.dtype == torch.int64
    keep = resnest_cuda.batched_nms(torch.empty(0, 4), torch.empty(0), torch.empty(0, dtype=torch.int64), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    assert resnest_cuda.nms(torch.tensor([[1.0, 2, 3, 4]]), torch.tensor([0.3]), 0.5).tolist() == [0]


def test_identical_boxes():
    boxes = torch.tensor([[5.0, 5, 15, 25]]).repeat(6, 1)
    assert resnest_cuda.nms(boxes, torch.tensor([0.1, 0.5, 0.3, 0.9, 0.2, 0.4]), 0.99).tolist() == [3]
    assert resnest_cuda.nms(boxes, torch.full((6,), 0.5), 0.5).tolist() == [0]  # ties: lower index first
    idxs = torch.tensor([2, 0, 1, 0, 2, 1])
    assert resnest_cuda.batched_nms(boxes, torch.full((6,), 0.5), idxs, 0.5).tolist() == [0, 1, 2]


def test_opcheck():
    boxes, scores = clustered_boxes(40, seed=4)
    torch.library.opcheck(torch.ops.resnest_cuda.nms.default, (boxes, scores, 0.5))


BOXES, SCORES, IDXS = torch.zeros(3, 4), torch.zeros(3), torch.zeros(3, dtype=torch.int64)
BAD_INPUTS = [
    (dict(boxes=torch.zeros(3, 5)), ValueError, "boxes"),
    (dict(boxes=torch.zeros(3, 4, dtype=torch.int32)), TypeError, "boxes"),
    (dict(boxes=None), TypeError, "boxes"),
    (dict(scores=torch.zeros(4)), ValueError, "scores"),
    (dict(scores=torch.zeros(3, 1)), ValueError, "scores"),
    (dict(scores=torch.zeros(3, dtype=torch.int64)), TypeError, "scores"),
    (dict(scores=torch.zeros(3, device="meta")), ValueError, "scores"),
    (dict(iou_threshold="0.5"), TypeError, "iou_threshold"),
    (dict(idxs=torch.zeros(3)), TypeError, "idxs"),
    (dict(idxs=torch.zeros(2, dtype=torch.int64)), ValueError, "idxs"),
    (dict(idxs=torch.zeros(3, dtype=torch.int64, device="meta")), ValueError, "idxs"),
]


@pytest.mark.parametrize("override, error, match", BAD_INPUTS)
def test_bad_inputs(override, error, match):
    args = dict(boxes=BOXES, scores=SCORES, idxs=IDXS, iou_threshold=0.5)
    args.update(override)
    with pytest.raises(error, match=match):
        resnest_cuda.batched_nms(**args)
    if "idxs" not in override:
        del args["idxs"]
        with pytest.raises(error, match=match):
            resnest_cuda.nms(**args)


@requires_cuda
@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_cpu(n, dtype):
    for integer in (True, False):
        boxes, scores = clustered_boxes(n, seed=n, integer=integer, dtype=dtype)
        for thr in (0.3, 0.5, 0.7):
            keep = resnest_cuda.nms(boxes.cuda(), scores.cuda(), thr)
            assert keep.is_cuda and keep.dtype == torch.int64
            assert torch.equal(keep.cpu(), resnest_cuda.nms(boxes, scores, thr))
    idxs = torch.randint(0, 5, (n,))
    keep = resnest_cuda.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5)
    assert torch.equal(keep.cpu(), resnest_cuda.batched_nms(boxes, scores, idxs, 0.5))
    empty = resnest_cuda.nms(torch.empty(0, 4, device="cuda"), torch.empty(0, device="cuda"), 0.5)
    assert empty.shape == (0,) and empty.is_cuda


@requires_cuda
def test_cuda_matches_torchvision():
    torchvision = pytest.importorskip("torchvision")
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(3000, 2, generator=g) * 500
    boxes = torch.cat([xy, xy + 10 + torch.rand(3000, 2, generator=g) * 100], dim=1).cuda()
    scores = torch.rand(3000, generator=g).cuda()  # distinct scores: no tie-breaking differences
    idxs = torch.randint(0, 10, (3000,), generator=g).cuda()
    for thr in (0.3, 0.5, 0.7):
        assert torch.equal(resnest_cuda.nms(boxes, scores, thr), torchvision.ops.nms(boxes, scores, thr))
        ours = resnest_cuda.batched_nms(boxes, scores, idxs, thr)
        assert torch.equal(ours, torchvision.ops.batched_nms(boxes, scores, idxs, thr))
