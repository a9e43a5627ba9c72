"""NMS and batched NMS kernels against the greedy pure-PyTorch reference (SPEC §6)."""

import pytest
import torch

import resnest_cuda
from resnest_cuda import reference
from resnest_cuda.detection_ops import _offset_by_category

from .helpers import devices, requires_cuda


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


# --------------------------------------------------------------------------------------------------------------
# The two batched paths: the per-category op (`_batched_nms_per_class[_fixed]`, what batched_nms runs outside
# torch.export) against one NMS over boxes offset by category (what torch.export keeps).

OPS = torch.ops.resnest_cuda


def offset_path(boxes, scores, idxs, iou_threshold, max_keep=-1, fixed=False):
    moved = _offset_by_category(boxes, idxs)
    if fixed:
        return OPS.nms_fixed(moved, scores, iou_threshold, max_keep)
    return OPS.nms(moved, scores, iou_threshold, max_keep)


def categories(n: int, seed: int, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "many":  # 80 categories, several of them empty
        return torch.randint(0, 80, (n,), generator=g)
    if kind == "sparse":  # negative and gapped ids, int32
        return (torch.randint(-20, 20, (n,), generator=g) * 7).int()
    if kind == "one":
        return torch.zeros(n, dtype=torch.uint8)
    return torch.randperm(n, generator=g)  # "each": every box its own category


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", ["many", "sparse", "one", "each"])
@pytest.mark.parametrize("n", [1, 2, 65, 300, 2000])
def test_per_class_matches_offset_path(device, kind, n):
    # Integer coordinates: the offsets are exact, so the two paths must agree exactly (ties included: 6 score levels).
    boxes, scores = clustered_boxes(n, seed=n + len(kind))
    idxs = categories(n, seed=n, kind=kind)
    boxes, scores, idxs = boxes.to(device), scores.to(device), idxs.to(device)
    for thr in (0.0, 0.3, 0.7):
        full = OPS._batched_nms_per_class(boxes, scores, idxs, thr)
        assert full.dtype == torch.int64 and full.device == boxes.device
        assert torch.equal(full, offset_path(boxes, scores, idxs, thr))
        assert torch.equal(full, resnest_cuda.batched_nms(boxes, scores, idxs, thr))
        if n <= 300:
            assert torch.equal(full.cpu(), reference.batched_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), thr))
        for k in sorted({0, 1, 7, len(full) - 1, len(full), len(full) + 5} - {-1}):
            keep = OPS._batched_nms_per_class(boxes, scores, idxs, thr, k)
            assert torch.equal(keep, full[:k]) and torch.equal(keep, offset_path(boxes, scores, idxs, thr, k))
            got = OPS._batched_nms_per_class_fixed(boxes, scores, idxs, thr, k)
            want = offset_path(boxes, scores, idxs, thr, k, fixed=True)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
            wrapped = resnest_cuda.batched_nms_fixed(boxes, scores, idxs, thr, k)
            assert torch.equal(wrapped[0], want[0]) and torch.equal(wrapped[1], want[1])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_per_class_dtypes(device, dtype):
    boxes, scores = clustered_boxes(400, seed=21, dtype=dtype)
    idxs = categories(400, seed=22, kind="many")
    boxes, scores, idxs = boxes.to(device), scores.to(device), idxs.to(device)
    keep = OPS._batched_nms_per_class(boxes, scores, idxs, 0.5)
    assert torch.equal(keep, offset_path(boxes, scores, idxs, 0.5))
    assert torch.equal(keep.cpu(), reference.batched_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), 0.5))


@pytest.mark.parametrize("device", devices())
def test_per_class_empty_input(device):
    boxes, scores = torch.empty(0, 4, device=device), torch.empty(0, device=device)
    idxs = torch.empty(0, dtype=torch.int64, device=device)
    assert OPS._batched_nms_per_class(boxes, scores, idxs, 0.5).shape == (0,)
    keep, valid = OPS._batched_nms_per_class_fixed(boxes, scores, idxs, 0.5, 3)
    assert keep.tolist() == [0, 0, 0] and valid.tolist() == [False] * 3


@pytest.mark.parametrize("device", devices())
def test_per_class_where_the_offset_path_is_wrong(device):
    """Where the offsets are not harmless the per-category op still keeps the categories apart (as the reference
    does) and the offset path does not: the equality tests above can fail."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 9, 9], [50, 50, 60, 60]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    idxs = torch.tensor([0, 1, 0, 1], device=device)
    # A negative threshold: every pair "overlaps", but only within a category.
    assert OPS._batched_nms_per_class(boxes, scores, idxs, -1.0).tolist() == [0, 1]
    assert offset_path(boxes, scores, idxs, -1.0).tolist() == [0]
    # A non-finite coordinate: the offsets make every box NaN and nothing is suppressed; per category, box 2 is.
    boxes[3, 2] = float("inf")
    assert OPS._batched_nms_per_class(boxes, scores, idxs, 0.5).tolist() == [0, 1, 3]
    assert torch.equal(OPS._batched_nms_per_class(boxes, scores, idxs, 0.5).cpu(),
                       reference.batched_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), 0.5))
    assert offset_path(boxes, scores, idxs, 0.5).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("device", devices())
def test_per_class_opcheck(device):
    boxes, scores = clustered_boxes(60, seed=23)
    idxs = categories(60, seed=24, kind="many")
    args = (boxes.to(device), scores.to(device), idxs.to(device), 0.5)
    torch.library.opcheck(OPS._batched_nms_per_class.default, args)
    torch.library.opcheck(OPS._batched_nms_per_class.default, (*args, 5))
    torch.library.opcheck(OPS._batched_nms_per_class_fixed.default, (*args, 9))


def test_per_class_bad_inputs_raise_the_wrapper_errors():
    idxs_cases = [
        (torch.zeros(2, dtype=torch.int64), ValueError, r"^batched_nms: idxs must have shape \[3\] \(one per box\)"),
        (torch.zeros(3), TypeError, r"^batched_nms: idxs must be an integer tensor, got Float$"),
        (torch.zeros(3, dtype=torch.bool), TypeError, r"^batched_nms: idxs must be an integer tensor, got Bool$"),
        (torch.zeros(3, dtype=torch.int64, device="meta"), ValueError, r"^batched_nms: idxs is on meta but boxes"),
    ]
    for idxs, error, match in idxs_cases:
        with pytest.raises(error, match=match) as from_wrapper:
            resnest_cuda.batched_nms(BOXES, SCORES, idxs, 0.5)
        with pytest.raises(error, match=match) as from_op:
            OPS._batched_nms_per_class(BOXES, SCORES, idxs, 0.5)
        assert str(from_wrapper.value) == str(from_op.value)
    with pytest.raises(ValueError, match=r"^batched_nms_fixed: max_keep must be >= 0, got -1$"):
        OPS._batched_nms_per_class_fixed(BOXES, SCORES, IDXS, 0.5, -1)
    with pytest.raises(ValueError, match=r"^batched_nms: boxes must have shape \[N, 4\]"):
        OPS._batched_nms_per_class(torch.zeros(3, 5), SCORES, IDXS, 0.5)


def test_compile_runs_the_per_class_op_and_export_the_offset_path():
    boxes, scores = clustered_boxes(80, seed=25)
    idxs = categories(80, seed=26, kind="many")

    def top(b, s, i):
        keep, valid = resnest_cuda.batched_nms_fixed(b, s, i, 0.5, 12)
        return b[keep] * valid[:, None], resnest_cuda.batched_nms(b, s, i, 0.5)

    torch._dynamo.reset()
    compiled = torch.compile(top, backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled(boxes, scores, idxs), top(boxes, scores, idxs)):
        assert torch.equal(got, want)

    class Top(torch.nn.Module):
        def forward(self, b, s, i):
            return resnest_cuda.batched_nms_fixed(b, s, i, 0.5, 12)

    graph = torch.export.export(Top(), (boxes, scores, idxs)).graph
    targets = {str(node.target) for node in graph.nodes}
    assert "resnest_cuda.nms_fixed.default" in targets
    assert not any("per_class" in t for t in targets)


@pytest.mark.parametrize("device", devices())
def test_per_class_strided_inputs(device):
    boxes, scores = clustered_boxes(300, seed=27)
    idxs = categories(300, seed=28, kind="many")
    want = OPS._batched_nms_per_class(boxes.to(device), scores.to(device), idxs.to(device), 0.5)
    # Every other column of wider tensors: boxes with strides (8, 2), scores and idxs with stride 2.
    wide_boxes = torch.zeros(300, 8, device=device)
    wide_boxes[:, ::2] = boxes.to(device)
    wide = torch.zeros(300, 2, device=device)
    wide[:, 0] = scores.to(device)
    wide_idxs = torch.zeros(300, 2, dtype=torch.int64, device=device)
    wide_idxs[:, 0] = idxs.to(device)
    strided = (wide_boxes[:, ::2], wide[:, 0], wide_idxs[:, 0])
    assert not any(t.is_contiguous() for t in strided)
    assert torch.equal(OPS._batched_nms_per_class(*strided, 0.5), want)
    keep, valid = OPS._batched_nms_per_class_fixed(*strided, 0.5, 40)
    assert torch.equal(keep[valid], want[:40])
