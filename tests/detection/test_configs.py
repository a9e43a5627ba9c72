"""Each seed config carries the hyperparameters of SPEC §5 (the table below is written out by hand from it), and
get_config finds configs by module name, mmdetection name and path."""

import os

import pytest

from detection.build import build_fpn, build_roi_head, build_rpn
from detection.config import Config
from detection.configs import get_config, list_configs

SEEDS = {
    "faster_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco": (
        "faster_rcnn_s50_fpn_syncbn-backbone+head_mstrain-range_1x_coco", "faster_rcnn", "resnest50"),
    "faster_rcnn_s101_fpn_syncbn_backbone_head_mstrain_range_1x_coco": (
        "faster_rcnn_s101_fpn_syncbn-backbone+head_mstrain-range_1x_coco", "faster_rcnn", "resnest101"),
    "mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco": (
        "mask_rcnn_s50_fpn_syncbn-backbone+head_mstrain_1x_coco", "mask_rcnn", "resnest50"),
    "mask_rcnn_s101_fpn_syncbn_backbone_head_mstrain_1x_coco": (
        "mask_rcnn_s101_fpn_syncbn-backbone+head_mstrain_1x_coco", "mask_rcnn", "resnest101"),
}

# (attribute path, expected) shared by the four Faster/Mask configs.
COMMON = [
    ("model.backbone.out_indices", (0, 1, 2, 3)),
    ("model.backbone.frozen_stages", 1),
    ("model.backbone.norm", "syncbn"),
    ("model.backbone.norm_eval", False),
    ("model.pixel_mean", (123.68, 116.779, 103.939)),
    ("model.pixel_std", (58.393, 57.12, 57.375)),
    ("model.size_divisor", 32),
    ("model.fpn.in_channels", (256, 512, 1024, 2048)),
    ("model.fpn.out_channels", 256),
    ("model.fpn.num_outs", 5),
    ("model.rpn.feat_channels", 256),
    ("model.rpn.anchors.scales", (8.0,)),
    ("model.rpn.anchors.ratios", (0.5, 1.0, 2.0)),
    ("model.rpn.anchors.strides", (4, 8, 16, 32, 64)),
    ("model.rpn.coder.target_means", (0.0, 0.0, 0.0, 0.0)),
    ("model.rpn.coder.target_stds", (1.0, 1.0, 1.0, 1.0)),
    ("model.rpn.loss.box_loss", "l1"),
    ("model.rpn.matcher.pos_iou_thr", 0.7),
    ("model.rpn.matcher.neg_iou_thr", 0.3),
    ("model.rpn.matcher.min_pos_iou", 0.3),
    ("model.rpn.matcher.match_low_quality", True),
    ("model.rpn.sampler.num", 256),
    ("model.rpn.sampler.pos_fraction", 0.5),
    ("model.rpn.sampler.add_gt_as_proposals", False),
    ("model.rpn.allowed_border", -1),
    ("model.rpn.train_proposals.nms_pre", 2000),
    ("model.rpn.train_proposals.nms_iou", 0.7),
    ("model.rpn.train_proposals.max_per_img", 1000),
    ("model.rpn.test_proposals.nms_pre", 1000),
    ("model.rpn.test_proposals.nms_iou", 0.7),
    ("model.rpn.test_proposals.max_per_img", 1000),
    ("model.roi_head.box_pooler.output_size", 7),
    ("model.roi_head.box_pooler.sampling_ratio", 0),
    ("model.roi_head.box_pooler.aligned", True),
    ("model.roi_head.box_pooler.featmap_strides", (4, 8, 16, 32)),
    ("model.roi_head.box_pooler.finest_scale", 56),
    ("stage.box_head.num_classes", 80),
    ("stage.box_head.num_convs", 4),
    ("stage.box_head.conv_channels", 256),
    ("stage.box_head.num_fcs", 1),
    ("stage.box_head.fc_channels", 1024),
    ("stage.box_head.norm", "syncbn"),
    ("stage.box_head.class_agnostic", False),
    ("stage.box_head.coder.target_means", (0.0, 0.0, 0.0, 0.0)),
    ("stage.box_head.coder.target_stds", (0.1, 0.1, 0.2, 0.2)),
    ("stage.box_head.loss.box_loss", "l1"),
    ("stage.matcher.pos_iou_thr", 0.5),
    ("stage.matcher.neg_iou_thr", 0.5),
    ("stage.matcher.min_pos_iou", 0.5),
    ("stage.sampler.num", 512),
    ("stage.sampler.pos_fraction", 0.25),
    ("stage.sampler.add_gt_as_proposals", True),
    ("model.roi_head.test.score_thr", 0.05),
    ("model.roi_head.test.nms_iou", 0.5),
    ("model.roi_head.test.max_per_img", 100),
    ("data.max_size", 1333),
    ("data.test_scale", 800),
    ("data.flip_prob", 0.5),
    ("data.size_divisor", 32),
    ("data.filter_empty_gt", True),
    ("solver.lr", 0.02),
    ("solver.base_batch_size", 16),
    ("solver.momentum", 0.9),
    ("solver.weight_decay", 1e-4),
    ("solver.warmup_iters", 500),
    ("solver.warmup_ratio", 0.001),
    ("solver.lr_steps", (8, 11)),
    ("solver.gamma", 0.1),
    ("solver.epochs", 12),
]

FASTER = [
    ("stage.matcher.match_low_quality", False),
    ("model.roi_head.mask_head", None),
    ("data.with_masks", False),
    ("data.train_scales", (640, 800)),
    ("data.scale_mode", "range"),
]

MASK = [
    ("stage.matcher.match_low_quality", True),
    ("model.roi_head.mask_head.num_classes", 80),
    ("model.roi_head.mask_head.num_convs", 4),
    ("model.roi_head.mask_head.conv_channels", 256),
    ("model.roi_head.mask_head.norm", "syncbn"),
    ("model.roi_head.mask_head.mask_size", 28),
    ("model.roi_head.mask_head.pooler.output_size", 14),
    ("model.roi_head.mask_head.pooler.sampling_ratio", 0),
    ("model.roi_head.mask_head.pooler.aligned", True),
    ("model.roi_head.mask_head.mask_thr_binary", 0.5),
    ("data.with_masks", True),
    ("data.train_scales", (640, 672, 704, 736, 768, 800)),
    ("data.scale_mode", "value"),
]


def _get(config, path):
    root, *rest = path.split(".")
    obj = {"model": config.model, "data": config.data, "solver": config.solver,
           "stage": config.model.roi_head.stages[0]}[root]
    for name in rest:
        obj = getattr(obj, name)
    return obj


@pytest.mark.parametrize("module_name", sorted(SEEDS))
def test_seed_config_hyperparameters(module_name):
    mmdet_name, kind, backbone = SEEDS[module_name]
    config = get_config(module_name)
    assert isinstance(config, Config)
    assert config.name == mmdet_name
    assert config.model.kind == kind and config.model.backbone.name == backbone
    assert len(config.model.roi_head.stages) == 1 and config.model.roi_head.stages[0].loss_weight == 1.0
    for path, expected in COMMON + (MASK if kind == "mask_rcnn" else FASTER):
        actual = _get(config, path)
        assert actual == pytest.approx(expected) if isinstance(expected, float) else actual == expected, path


def test_get_config_by_name_and_path():
    assert set(SEEDS) | {"tiny_test"} <= set(list_configs())
    by_mmdet_name = get_config("mask_rcnn_s50_fpn_syncbn-backbone+head_mstrain_1x_coco")
    by_module = get_config("mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco")
    path = os.path.join(os.path.dirname(__import__("detection.configs").configs.__file__),
                        "mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco.py")
    assert by_mmdet_name == by_module == get_config(path)
    by_module.model.backbone.name = "changed"  # a copy: the next lookup is unaffected
    assert get_config("mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco").model.backbone.name == "resnest50"
    with pytest.raises(KeyError, match="not found"):
        get_config("no_such_config")


def test_heads_have_mmdetection_keys():
    config = get_config("mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco").model
    keys = {f"neck.{k}" for k in build_fpn(config.fpn).state_dict()}
    keys |= {f"rpn_head.{k}" for k in build_rpn(config.rpn).state_dict()}
    keys |= {f"roi_head.{k}" for k in build_roi_head(config.roi_head).state_dict()}
    expected = {
        "neck.lateral_convs.0.conv.weight", "neck.fpn_convs.3.conv.bias",
        "rpn_head.rpn_conv.weight", "rpn_head.rpn_cls.weight", "rpn_head.rpn_reg.bias",
        "roi_head.bbox_head.shared_convs.3.conv.weight", "roi_head.bbox_head.shared_convs.0.bn.running_mean",
        "roi_head.bbox_head.shared_fcs.0.weight", "roi_head.bbox_head.fc_cls.weight", "roi_head.bbox_head.fc_reg.bias",
        "roi_head.mask_head.convs.3.conv.weight", "roi_head.mask_head.convs.0.bn.bias",
        "roi_head.mask_head.upsample.weight", "roi_head.mask_head.conv_logits.bias",
    }
    assert expected <= keys
    assert not any(("anchor" in k or "pooler" in k) for k in keys)  # no non-mmdetection state
    roi = build_roi_head(config.roi_head)
    assert roi.bbox_head.fc_cls.out_features == 81 and roi.bbox_head.fc_reg.out_features == 320
    assert roi.bbox_head.shared_fcs[0].in_features == 256 * 7 * 7
    assert roi.mask_head.conv_logits.out_channels == 80
