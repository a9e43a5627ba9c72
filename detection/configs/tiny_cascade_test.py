"""A tiny Cascade Mask R-CNN on ResNeSt-14 for tests: the `tiny_test` detector with the three cascade stages
(IoU 0.5 / 0.6 / 0.7, class-agnostic SmoothL1, stage loss weights 1 / 0.5 / 0.25) and a mask head per stage."""

from dataclasses import replace

from detection.configs.cascade_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco import cascade_stages
from detection.configs.tiny_test import config as base
from detection.modeling.config import SamplerConfig

stages = tuple(
    replace(stage, sampler=SamplerConfig(num=64, pos_fraction=0.25, add_gt_as_proposals=True))
    for stage in cascade_stages(base.model.roi_head.stages[0].box_head)
)
config = replace(
    base,
    name="tiny_cascade_test",
    model=replace(base.model, kind="cascade_mask_rcnn", roi_head=replace(base.model.roi_head, stages=stages)),
)
