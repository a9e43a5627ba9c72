"""Cascade R-CNN and Cascade Mask R-CNN: end-to-end steps on the tiny config and the stage logic on hand-made
proposals (IoU thresholds per stage, GT removal, refinement by class, test-time averaging)."""

import math

import pytest
import torch

from detection.build import build_model
from detection.configs import get_config
from detection.modeling.box_ops import BoxCoder, encode_boxes
from detection.modeling.roi_heads import SampledRoIs

from .stand_ins import random_batch, tiny_model

KINDS = ["cascade_rcnn", "cascade_mask_rcnn"]


def stage_keys(kind):
    names = ["loss_cls", "loss_bbox"] + (["loss_mask"] if kind == "cascade_mask_rcnn" else [])
    return {"loss_rpn_cls", "loss_rpn_bbox"} | {f"{n}_s{i}" for n in names for i in range(3)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_boxes", [(3, 1), (0, 0)])
def test_training_step(kind, num_boxes):
    model, _ = tiny_model(kind)
    model.train()
    images, targets = random_batch(num_boxes)
    losses = model(images, targets)
    assert set(losses) == stage_keys(kind)
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    sum(losses.values()).backward()
    for i in range(3):
        grads = [p.grad for p in model.roi_head.bbox_head[i].parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), f"stage {i}"
    if sum(num_boxes) > 0:
        assert all(losses[f"loss_cls_s{i}"] > 0 for i in range(3))


@pytest.mark.parametrize("kind", KINDS)
def test_eval_forward(kind):
    model, cfg = tiny_model(kind)
    model.eval()
    model.roi_head.score_thr = 0.0
    images, _ = random_batch((1, 1))
    with torch.no_grad():
        outputs = model(images, original_sizes=[(256, 320), (96, 128)])
    for out, size in zip(outputs, [(256, 320), (96, 128)]):
        n = out["boxes"].shape[0]
        assert 0 < n <= cfg.roi_head.test.max_per_img
        assert (out["boxes"][:, 2] <= size[1]).all() and (out["boxes"][:, 3] <= size[0]).all()
        assert (out["scores"][:-1] >= out["scores"][1:]).all()
        if kind == "cascade_mask_rcnn":
            assert out["masks"].shape == (n, *size)
        else:
            assert "masks" not in out


def test_stage_structure_matches_mmdetection_keys():
    model, _ = tiny_model("cascade_mask_rcnn")
    keys = model.state_dict().keys()
    for i in range(3):
        assert f"roi_head.bbox_head.{i}.fc_cls.weight" in keys
        assert f"roi_head.mask_head.{i}.conv_logits.weight" in keys
    # Class-agnostic regression: 4 outputs per RoI in every stage.
    assert all(model.roi_head.bbox_head[i].fc_reg.out_features == 4 for i in range(3))


def test_stage_iou_thresholds():
    """Proposals at IoU ~0.55 and ~0.65 with the GT: positive for stage 0 (0.5); only the second for stage 1
    (0.6); neither for stage 2 (0.7), where only the GT added as a proposal is positive."""
    model, _ = tiny_model("cascade_rcnn")
    heads = model.roi_head
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    # Width 55 / 100 -> IoU 0.55; width 65 -> IoU 0.65 (same height, contained in the GT).
    proposals = [torch.tensor([[0.0, 0.0, 55.0, 100.0], [0.0, 0.0, 65.0, 100.0], [200.0, 200.0, 250.0, 250.0]])]
    targets = [{"boxes": gt, "labels": torch.tensor([1])}]
    expected_pos = {0: 3, 1: 2, 2: 1}  # GT itself always positive
    for stage, count in expected_pos.items():
        torch.manual_seed(0)
        samples = heads._run_stage_sampling(stage, proposals, targets)
        assert int(samples.pos.sum()) == count, f"stage {stage}"
        assert int(samples.is_gt.sum()) == 1 and bool(samples.pos[samples.is_gt].all())


def make_samples(rois, labels, is_gt, valid=None, slots_per_image=None):
    n = rois.shape[0]
    return SampledRoIs(
        rois=rois, labels=labels, box_targets=torch.zeros(n, 4), pos=labels < 3, matched_idxs=torch.zeros(n,
        dtype=torch.int64), is_gt=is_gt, valid=torch.ones(n, dtype=torch.bool) if valid is None else valid,
        slots_per_image=slots_per_image,
    )


def test_refinement_drops_gt_and_uses_argmax_over_foreground():
    """Class-specific regression: a positive uses its assigned label's deltas, a negative the argmax over the
    non-background classes (never the background column, even when it scores highest). GT RoIs are dropped."""
    model, _ = tiny_model("cascade_rcnn")
    heads = model.roi_head
    head = heads.bbox_head[0]
    head.class_agnostic = False  # exercise class selection (3 classes, background index 3)
    rois = torch.tensor(
        [[0, 10.0, 10.0, 50.0, 50.0], [0, 20.0, 20.0, 60.0, 80.0], [1, 5.0, 5.0, 25.0, 45.0], [0, 0, 0, 30, 30]]
    )
    labels = torch.tensor([2, 3, 3, 0])  # positive of class 2, two negatives, and a GT RoI of class 0
    is_gt = torch.tensor([False, False, False, True])
    cls_logits = torch.tensor(
        [[0.0, 0.0, 1.0, 9.0], [0.0, 2.0, 1.0, 9.0], [3.0, 0.0, 1.0, 9.0], [9.0, 0.0, 0.0, 0.0]]
    )
    deltas = torch.zeros(4, 3, 4)
    for c in range(3):
        deltas[:, c, 0] = 0.1 * (c + 1)  # class c shifts x by 0.1 (c + 1) box widths, before the stds
    sizes = [(100, 100), (100, 100)]
    refined, valid = heads._refine_sampled(
        0, make_samples(rois, labels, is_gt), cls_logits, deltas.view(4, 12), sizes
    )
    assert valid is None and [r.shape[0] for r in refined] == [2, 1]  # the GT RoI of image 0 is gone
    coder = heads.coders[0]
    expected_cls = [2, 1, 0]  # label 2; argmax over foreground of row 1 -> 1; of row 2 -> 0
    kept_rows = [0, 1, 2]
    for out_box, row, c in zip(torch.cat(refined), kept_rows, expected_cls):
        want = coder.decode(rois[row, 1:][None], deltas[row, c][None], max_shape=(100, 100))[0]
        torch.testing.assert_close(out_box, want)

    # Fixed-size samples (2 slots per image; image 1's second slot is padding): the same boxes, kept in place, and
    # the GT RoI and the padding marked invalid instead of dropped.
    order = [0, 3, 2, 2]  # image 0: positive, GT; image 1: negative, padding (a copy of a real row)
    fixed = make_samples(rois[order], labels[order], is_gt[order], torch.tensor([True, True, True, False]), 2)
    boxes, valid = heads._refine_sampled(0, fixed, cls_logits[order], deltas.view(4, 12)[order], sizes)
    assert [b.shape[0] for b in boxes] == [2, 2]
    assert [v.tolist() for v in valid] == [[True, False], [True, False]]
    torch.testing.assert_close(boxes[0][0], torch.cat(refined)[0])
    torch.testing.assert_close(boxes[1][0], torch.cat(refined)[2])


def test_inference_averages_stage_logits_and_uses_last_stage_boxes():
    model, _ = tiny_model("cascade_rcnn")
    heads = model.roi_head.eval()
    heads.score_thr = 0.0
    proposals = [torch.tensor([[10.0, 10.0, 40.0, 40.0], [50.0, 50.0, 90.0, 70.0]])]
    stage_logits = [
        torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]),
        torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]]),
        torch.tensor([[1.0, 0.0, 0.0, 3.0], [0.0, 2.0, 1.0, 0.0]]),
    ]
    stage_deltas = [torch.full((2, 4), 0.5), torch.zeros(2, 4), torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])]
    for i in range(3):
        heads.bbox_head[i].forward = lambda x, i=i: (stage_logits[i], stage_deltas[i])
    features = [torch.zeros(1, 32, 100 // s, 100 // s) for s in (4, 8, 16, 32)]  # the heads' outputs are fixed
    with torch.no_grad():
        detections, _ = heads(features, proposals, [(100, 100)])
    mean_scores = (sum(stage_logits) / 3).softmax(dim=1)[:, :-1]
    # Stage-3 boxes: proposals refined by stage 1 (0.5 deltas) then stage 2 (zero deltas), decoded with stage 3's.
    after_1 = heads.coders[0].decode(proposals[0], stage_deltas[0], max_shape=(100, 100))
    after_2 = heads.coders[1].decode(after_1, stage_deltas[1], max_shape=(100, 100))
    final = heads.coders[2].decode(after_2, stage_deltas[2], max_shape=(100, 100))
    det = detections[0]
    for box, score, label in zip(det["boxes"], det["scores"], det["labels"]):
        row = int(torch.nonzero((final == box).all(dim=1))[0])
        assert math.isclose(float(score), float(mean_scores[row, label]), rel_tol=1e-5)
    assert det["scores"].max() == pytest.approx(float(mean_scores.max()), rel=1e-5)


CASCADE_TABLE = {
    # config module: (kind, backbone, train scale mode, mask)
    "cascade_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco": ("cascade_rcnn", "resnest50", "range", False),
    "cascade_rcnn_s101_fpn_syncbn_backbone_head_mstrain_range_1x_coco": ("cascade_rcnn", "resnest101", "range", False),
    "cascade_mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco": ("cascade_mask_rcnn", "resnest50", "value", True),
    "cascade_mask_rcnn_s101_fpn_syncbn_backbone_head_mstrain_1x_coco": (
        "cascade_mask_rcnn", "resnest101", "value", True),
}


@pytest.mark.parametrize("module", sorted(CASCADE_TABLE))
def test_cascade_configs_carry_spec_values(module):
    kind, backbone, scale_mode, with_mask = CASCADE_TABLE[module]
    cfg = get_config(module)
    assert cfg.name == module.replace("syncbn_backbone_head", "syncbn-backbone+head").replace(
        "mstrain_range", "mstrain-range")
    m = cfg.model
    assert (m.kind, m.backbone.name, m.backbone.norm, m.backbone.frozen_stages) == (kind, backbone, "syncbn", 1)
    rpn = m.rpn
    assert (rpn.loss.box_loss, rpn.loss.beta, rpn.allowed_border) == ("smooth_l1", pytest.approx(1 / 9), 0.0)
    assert (rpn.train_proposals.nms_pre, rpn.train_proposals.max_per_img, rpn.train_proposals.nms_iou) == (
        2000, 2000, 0.7)
    assert (rpn.test_proposals.nms_pre, rpn.test_proposals.max_per_img) == (1000, 1000)
    stages = m.roi_head.stages
    assert [s.matcher.pos_iou_thr for s in stages] == [0.5, 0.6, 0.7]
    assert [s.matcher.neg_iou_thr for s in stages] == [0.5, 0.6, 0.7]
    assert [s.matcher.match_low_quality for s in stages] == [False] * 3
    assert [s.loss_weight for s in stages] == [1.0, 0.5, 0.25]
    assert [s.box_head.coder.target_stds for s in stages] == [
        (0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067)]
    for s in stages:
        assert s.box_head.class_agnostic and s.box_head.norm == "syncbn" and s.box_head.num_convs == 4
        assert (s.box_head.loss.box_loss, s.box_head.loss.beta) == ("smooth_l1", 1.0)
        assert (s.sampler.num, s.sampler.pos_fraction, s.sampler.add_gt_as_proposals) == (512, 0.25, True)
    assert (m.roi_head.mask_head is not None) == with_mask
    assert cfg.data.scale_mode == scale_mode
    assert (m.roi_head.test.score_thr, m.roi_head.test.nms_iou, m.roi_head.test.max_per_img) == (0.05, 0.5, 100)
    assert (cfg.solver.lr, cfg.solver.epochs, tuple(cfg.solver.lr_steps)) == (0.02, 12, (8, 11))


def test_build_rejects_mismatched_kind():
    from dataclasses import replace

    cfg = get_config("tiny_cascade_test").model
    with pytest.raises(ValueError, match="stages"):
        build_model(replace(cfg, kind="mask_rcnn"))


def test_encode_targets_use_stage_stds():
    """Each stage encodes its regression targets with its own stds."""
    model, _ = tiny_model("cascade_rcnn")
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[1.0, 1.0, 12.0, 11.0]])
    raw = encode_boxes(boxes, gt)
    for coder in model.roi_head.coders:
        assert isinstance(coder, BoxCoder)
        torch.testing.assert_close(coder.encode(boxes, gt), raw / torch.tensor(coder.stds))
