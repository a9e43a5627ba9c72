"""Faster R-CNN, ResNeSt-101-FPN: the S-50 config with the deeper backbone (blocks 3,4,23,3, stem width 64).
mmdetection: faster_rcnn_s101_fpn_syncbn-backbone+head_mstrain-range_1x_coco (box AP 44.5)."""

from dataclasses import replace

from detection.configs.faster_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco import config as base

config = replace(
    base,
    name="faster_rcnn_s101_fpn_syncbn-backbone+head_mstrain-range_1x_coco",
    model=replace(base.model, backbone=replace(base.model.backbone, name="resnest101", pretrained="open-mmlab://resnest101")),
)
