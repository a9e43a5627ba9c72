"""Every degenerate batch a dataset of one's own can produce trains: one training step of Faster, Mask, Cascade and
Cascade Mask R-CNN, on the fixed-size and the compacted path, gives finite losses and finite gradients, or (a batch
of one image, which batch-statistics BatchNorm cannot train) one clear error.

The batches mix images without annotations (an image whose annotations are all crowd reaches the model that way),
GT boxes of zero, negative or sub-pixel size, outside the image or covering it, more GT boxes than sampled RoI
slots, images smaller than the largest stride, extreme aspect ratios, and steps in which the RPN keeps no proposal
for any image (every proposal filtered as too small). Hypothesis draws them, derandomised so that CI sees the same
examples every run.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resnest_cuda
from detection.modeling.matcher import NEGATIVE, Matcher

from .stand_ins import tiny_model

pytestmark = pytest.mark.skipif(not all(hasattr(resnest_cuda, n) for n in ("nms", "roi_align", "resnest14")),
                                reason="needs the detection ops and the ResNeSt backbones")

NUM_CLASSES = 3
KINDS = ("faster_rcnn", "mask_rcnn", "cascade_rcnn", "cascade_mask_rcnn")
_MODELS = {}


def _model(kind: str):
    """The tiny detector of `kind`, built once per test session (a step changes only BatchNorm statistics)."""
    if kind not in _MODELS:
        model, _ = tiny_model(kind, seed=0)
        _MODELS[kind] = model.train()
    return _MODELS[kind]


BOX_KINDS = ("normal", "zero", "negative", "subpixel", "outside", "covering", "beyond")


def _box(kind: str, h: int, w: int, u: tuple[float, float, float, float]) -> list[float]:
    """One GT box of `kind` in an image of h x w, from four uniform numbers in [0, 1)."""
    x, y = u[0] * w * 0.8, u[1] * h * 0.8
    bw, bh = 2 + u[2] * (w - x - 2), 2 + u[3] * (h - y - 2)
    if kind == "normal":
        return [x, y, min(x + bw, w), min(y + bh, h)]
    if kind == "zero":
        return [x, y, x, y + bh]
    if kind == "negative":
        return [x + bw, y + bh, x, y]
    if kind == "subpixel":
        return [x, y, x + 0.3, y + 0.4]
    if kind == "outside":
        return [w + 5 + x, h + 5 + y, w + 5 + x + bw, h + 5 + y + bh]
    if kind == "covering":
        return [0.0, 0.0, float(w), float(h)]
    return [-20.0, -20.0, w + 20.0, h + 20.0]  # beyond: larger than the image on every side


# Few sizes (each new batch shape costs the convolutions a new setup): ordinary, smaller than the largest stride
# (32), and 1:10 in either direction.
SIZES = st.sampled_from([(64, 96), (20, 24), (16, 160), (160, 16)])


@st.composite
def image_and_target(draw, with_masks: bool):
    h, w = draw(SIZES)
    many = draw(st.booleans()) and draw(st.booleans())  # a quarter of the images: more GT than RoI slots
    if many:
        kinds = ["normal"] * draw(st.integers(130, 160))
    else:
        kinds = draw(st.lists(st.sampled_from(BOX_KINDS), min_size=0, max_size=4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    boxes = [_box(k, h, w, tuple(torch.rand(4, generator=g).tolist())) for k in kinds]
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    target = {"boxes": boxes, "labels": torch.randint(0, NUM_CLASSES, (len(kinds),), generator=g)}
    if with_masks:
        masks = torch.zeros(len(kinds), h, w, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            x1, x2 = sorted((max(0, int(x1)), min(w, int(math.ceil(x2)))))
            y1, y2 = sorted((max(0, int(y1)), min(h, int(math.ceil(y2)))))
            masks[i, y1:y2, x1:x2] = 1
        target["masks"] = masks
    return torch.rand(3, h, w, generator=g) * 255, target


@st.composite
def batches(draw, with_masks: bool):
    items = [draw(image_and_target(with_masks)) for _ in range(2)]
    return [image for image, _ in items], [target for _, target in items], draw(st.booleans())


def _train_step(model, images, targets, no_proposals: bool, static: bool):
    rpn = model.rpn_head
    settings_before = rpn.train_settings
    model.static_shapes = static
    if no_proposals:  # every proposal is smaller than this: the R-CNN heads see none (only the GT boxes)
        rpn.train_settings = settings_before._replace(min_box_size=1e6)
    try:
        model.zero_grad(set_to_none=True)
        losses = model(images, targets)
        sum(losses.values()).backward()
    finally:
        rpn.train_settings = settings_before
    return losses


@pytest.mark.parametrize(
    "kind, static, mask_slots",
    [(kind, static, None) for kind in KINDS for static in (True, False)]
    + [(kind, True, 3) for kind in KINDS if "mask" in kind],
    ids=lambda v: {True: "fixed_size", False: "compacted", None: "all_positives", 3: "3_mask_rows"}.get(v, v),
)
def test_every_degenerate_batch_trains(kind, static, mask_slots, monkeypatch):
    model = _model(kind)
    with_masks = "mask" in kind
    if with_masks:  # mask_slots_per_image: the batch's positives share 2 x 3 mask-head rows
        monkeypatch.setattr(model.roi_head, "mask_slots_per_image", mask_slots)

    @settings(max_examples=4, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(batch=batches(with_masks))
    def check(batch):
        images, targets, no_proposals = batch
        losses = _train_step(model, images, targets, no_proposals, static)
        assert losses and all(torch.isfinite(v).all() for v in losses.values()), losses
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads, "no parameter received a gradient"
        bad = [name for name, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()]
        assert not bad, (bad[:5], losses)

    check()


@pytest.mark.parametrize("static", [True, False], ids=["fixed_size", "compacted"])
def test_one_image_per_batch_is_refused_naming_the_cause(static):
    """Batch-statistics BatchNorm cannot train on one image: one ValueError that says so, no crash deeper in."""
    model = _model("mask_rcnn")
    target = {"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([1]),
              "masks": torch.ones(1, 48, 64, dtype=torch.uint8)}
    with pytest.raises(ValueError, match="batch"):
        _train_step(model, [torch.rand(3, 48, 64) * 255], [target], False, static)


@pytest.mark.parametrize("static", [True, False], ids=["fixed_size", "compacted"])
@pytest.mark.parametrize("kind", KINDS)
def test_background_only_step_without_proposals(kind, static):
    """No GT in any image and no proposal either: every loss finite, the box head's background loss included."""
    model = _model(kind)
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in range(2)]
    if "mask" in kind:
        for t, (h, w) in zip(targets, [(64, 96), (48, 64)]):
            t["masks"] = torch.zeros(0, h, w, dtype=torch.uint8)
    images = [torch.rand(3, 64, 96) * 255, torch.rand(3, 48, 64) * 255]
    for no_proposals in (False, True):
        losses = _train_step(model, images, targets, no_proposals, static)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        assert all(p.grad.isfinite().all() for p in model.parameters() if p.grad is not None)


def test_matcher_on_an_image_without_proposals():
    """The crash a small dataset of one's own hit: GT boxes, no proposals, low-quality matching on."""
    matched, labels = Matcher(0.5, 0.5, 0.5, True)(torch.zeros(2, 0))
    assert matched.shape == labels.shape == (0,)
    matched, labels = Matcher(0.5, 0.5, 0.5, True)(torch.zeros(0, 3))
    assert matched.tolist() == [0, 0, 0] and labels.tolist() == [NEGATIVE] * 3
