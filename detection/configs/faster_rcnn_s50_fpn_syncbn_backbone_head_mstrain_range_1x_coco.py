"""Faster R-CNN, ResNeSt-50-FPN, SyncBN in backbone and heads, multi-scale training (short side in [640, 800]),
1x schedule. mmdetection: faster_rcnn_s50_fpn_syncbn-backbone+head_mstrain-range_1x_coco (box AP 42.0)."""

from detection.config import Config, DataConfig, SolverConfig
from detection.modeling.config import (
    AnchorConfig,
    BackboneConfig,
    BoxCoderConfig,
    BoxHeadConfig,
    FPNConfig,
    LossConfig,
    MatcherConfig,
    ModelConfig,
    ProposalConfig,
    RCNNStageConfig,
    RoIHeadConfig,
    RoIPoolerConfig,
    RPNConfig,
    SamplerConfig,
    TestConfig,
)

config = Config(
    name="faster_rcnn_s50_fpn_syncbn-backbone+head_mstrain-range_1x_coco",
    model=ModelConfig(
        kind="faster_rcnn",
        backbone=BackboneConfig(name="resnest50", out_indices=(0, 1, 2, 3), frozen_stages=1, norm="syncbn",
                                norm_eval=False, pretrained="open-mmlab://resnest50"),
        fpn=FPNConfig(in_channels=(256, 512, 1024, 2048), out_channels=256, num_outs=5),
        rpn=RPNConfig(
            in_channels=256,
            feat_channels=256,
            anchors=AnchorConfig(scales=(8.0,), ratios=(0.5, 1.0, 2.0), strides=(4, 8, 16, 32, 64)),
            coder=BoxCoderConfig(target_means=(0.0, 0.0, 0.0, 0.0), target_stds=(1.0, 1.0, 1.0, 1.0)),
            loss=LossConfig(box_loss="l1", cls_weight=1.0, box_weight=1.0),
            matcher=MatcherConfig(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=True),
            sampler=SamplerConfig(num=256, pos_fraction=0.5, add_gt_as_proposals=False),
            allowed_border=-1.0,
            train_proposals=ProposalConfig(nms_pre=2000, nms_iou=0.7, max_per_img=1000, min_box_size=0.0),
            test_proposals=ProposalConfig(nms_pre=1000, nms_iou=0.7, max_per_img=1000, min_box_size=0.0),
        ),
        roi_head=RoIHeadConfig(
            box_pooler=RoIPoolerConfig(output_size=7, sampling_ratio=0, aligned=True,
                                       featmap_strides=(4, 8, 16, 32), finest_scale=56.0),
            stages=(
                RCNNStageConfig(
                    box_head=BoxHeadConfig(
                        num_classes=80, in_channels=256, num_convs=4, conv_channels=256, num_fcs=1, fc_channels=1024,
                        norm="syncbn", class_agnostic=False,
                        coder=BoxCoderConfig(target_means=(0.0, 0.0, 0.0, 0.0), target_stds=(0.1, 0.1, 0.2, 0.2)),
                        loss=LossConfig(box_loss="l1", cls_weight=1.0, box_weight=1.0),
                    ),
                    matcher=MatcherConfig(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=False),
                    sampler=SamplerConfig(num=512, pos_fraction=0.25, add_gt_as_proposals=True),
                    loss_weight=1.0,
                ),
            ),
            mask_head=None,
            test=TestConfig(score_thr=0.05, nms_iou=0.5, max_per_img=100),
        ),
        pixel_mean=(123.68, 116.779, 103.939),
        pixel_std=(58.393, 57.12, 57.375),
        size_divisor=32,
    ),
    data=DataConfig(
        dataset="coco",
        with_masks=False,
        train_scales=(640, 800),
        scale_mode="range",
        max_size=1333,
        test_scale=800,
        resize_mode="mmcv",  # mmcv.imrescale with cv2 bilinear, as mmdetection trains and tests
        flip_prob=0.5,
        size_divisor=32,
        filter_empty_gt=True,
        images_per_gpu=2,
    ),
    solver=SolverConfig(
        lr=0.02, base_batch_size=16, momentum=0.9, weight_decay=1e-4, warmup_iters=500, warmup_ratio=0.001,
        lr_steps=(8, 11), gamma=0.1, epochs=12,
        amp=False,  # fp32 as mmdetection (OptimWrapper); solver.amp=true trains with bf16 autocast
    ),
)
