"""Cascade Mask R-CNN, ResNeSt-50-FPN, SyncBN in backbone and heads, multi-scale training (short side one of
640..800 step 32), 1x schedule. mmdetection: cascade_mask_rcnn_s50_fpn_syncbn-backbone+head_mstrain_1x_coco
(box AP 45.4, mask AP 39.5).

The Mask R-CNN S-50 config (data, mask head) with the cascade RPN and the three box stages of Cascade R-CNN
(no low-quality matches in the R-CNN stages); one mask head per stage, their sigmoid masks averaged at test time."""

from dataclasses import replace

from detection.configs.cascade_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco import (
    cascade_rpn,
    cascade_stages,
)
from detection.configs.mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco import config as base

config = replace(
    base,
    name="cascade_mask_rcnn_s50_fpn_syncbn-backbone+head_mstrain_1x_coco",
    model=replace(
        base.model,
        kind="cascade_mask_rcnn",
        rpn=cascade_rpn(base.model.rpn),
        roi_head=replace(base.model.roi_head, stages=cascade_stages(base.model.roi_head.stages[0].box_head)),
    ),
)
