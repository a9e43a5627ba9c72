"""Cascade R-CNN, ResNeSt-50-FPN, SyncBN in backbone and heads, multi-scale training (short side in [640, 800]),
1x schedule. mmdetection: cascade_rcnn_s50_fpn_syncbn-backbone+head_mstrain-range_1x_coco (box AP 44.5).

The Faster R-CNN S-50 config with: RPN SmoothL1 (beta 1/9), allowed_border 0 and 2000 training proposals; three
class-agnostic box stages at IoU 0.5 / 0.6 / 0.7 with their own target stds, SmoothL1 (beta 1), stage loss weights
1 / 0.5 / 0.25."""

from dataclasses import replace

from detection.configs.faster_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco import config as base
from detection.modeling.config import (
    BoxCoderConfig,
    LossConfig,
    MatcherConfig,
    ProposalConfig,
    RCNNStageConfig,
    SamplerConfig,
)

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)


def cascade_rpn(rpn):
    return replace(
        rpn,
        loss=LossConfig(box_loss="smooth_l1", beta=1.0 / 9.0, cls_weight=1.0, box_weight=1.0),
        allowed_border=0.0,
        train_proposals=ProposalConfig(nms_pre=2000, nms_iou=0.7, max_per_img=2000, min_box_size=0.0),
        test_proposals=ProposalConfig(nms_pre=1000, nms_iou=0.7, max_per_img=1000, min_box_size=0.0),
    )


def cascade_stages(box_head):
    """Three stages from one Shared4Conv1FC head config: class-agnostic, SmoothL1 beta 1, per-stage IoU and stds."""
    return tuple(
        RCNNStageConfig(
            box_head=replace(
                box_head,
                class_agnostic=True,
                coder=BoxCoderConfig(target_means=(0.0, 0.0, 0.0, 0.0), target_stds=stds),
                loss=LossConfig(box_loss="smooth_l1", beta=1.0, cls_weight=1.0, box_weight=1.0),
            ),
            matcher=MatcherConfig(pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou, match_low_quality=False),
            sampler=SamplerConfig(num=512, pos_fraction=0.25, add_gt_as_proposals=True),
            loss_weight=weight,
        )
        for iou, stds, weight in zip(STAGE_IOUS, STAGE_STDS, STAGE_LOSS_WEIGHTS)
    )


config = replace(
    base,
    name="cascade_rcnn_s50_fpn_syncbn-backbone+head_mstrain-range_1x_coco",
    model=replace(
        base.model,
        kind="cascade_rcnn",
        rpn=cascade_rpn(base.model.rpn),
        roi_head=replace(base.model.roi_head, stages=cascade_stages(base.model.roi_head.stages[0].box_head)),
    ),
)
