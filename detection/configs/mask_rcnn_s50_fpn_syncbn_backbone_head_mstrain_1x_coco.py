"""Mask R-CNN, ResNeSt-50-FPN, SyncBN in backbone and heads, multi-scale training (short side one of
640, 672, ..., 800), 1x schedule. The Faster R-CNN S-50 config plus the mask head, low-quality matches in the
R-CNN assigner and value-mode scales. mmdetection: mask_rcnn_s50_fpn_syncbn-backbone+head_mstrain_1x_coco
(box AP 42.6, mask AP 38.1)."""

from dataclasses import replace

from detection.configs.faster_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco import config as faster
from detection.modeling.config import MaskHeadConfig, MatcherConfig, RoIPoolerConfig

_stage = replace(
    faster.model.roi_head.stages[0],
    matcher=MatcherConfig(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=True),
)

config = replace(
    faster,
    name="mask_rcnn_s50_fpn_syncbn-backbone+head_mstrain_1x_coco",
    model=replace(
        faster.model,
        kind="mask_rcnn",
        roi_head=replace(
            faster.model.roi_head,
            stages=(_stage,),
            mask_head=MaskHeadConfig(
                num_classes=80, in_channels=256, num_convs=4, conv_channels=256, norm="syncbn", mask_size=28,
                pooler=RoIPoolerConfig(output_size=14, sampling_ratio=0, aligned=True,
                                       featmap_strides=(4, 8, 16, 32), finest_scale=56.0),
                loss_weight=1.0, mask_thr_binary=0.5,
                # No cap on the mask head's training rows: with trained proposals and COCO-like object counts the
                # positives fill both images' 128 slots in over 5 % of batches of 2 (mean 157 of 256), so a cap of
                # 64 per image would drop 29 % of them, 96 per image 8 % (python -m benchmarks.mask_positives).
                # Sparse data may set it (detection/modeling/config.py, MaskHeadConfig.mask_slots_per_image).
                mask_slots_per_image=None,
            ),
        ),
    ),
    data=replace(faster.data, with_masks=True, poly2mask=False, train_scales=(640, 672, 704, 736, 768, 800),
                 scale_mode="value"),
)
