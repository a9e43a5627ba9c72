"""Default config: Mask R-CNN with a ResNeSt-14-FPN on the synthetic shapes dataset (96 px images, 4 classes),
trained from scratch on a 2-core CPU in about 12 minutes. `python -m detection.train` with no arguments runs it.

Sized for the data: the objects are 14-47 px (square root of the box area), so
- the anchors have two scales per level, 4 and 4·√2 (16, 23, 32, 45, ... px), which gives the RPN positive anchors
  above its 0.7 IoU threshold for every object size (one scale, 16/32/64 px, left 45 px objects with
  low-quality matches only);
- the mask head pools 7×7 and predicts 14×14 masks (finer masks than the objects have pixels cost a fifth of the
  step for nothing);
- a narrow FPN (64 channels) and heads, a 2-fc box head, fewer sampled anchors, RoIs and proposals than the COCO
  configs, no frozen stages (there are no pretrained weights to keep), plain BN;
- 22 epochs of 100 iterations (batch 4), the learning rate divided by 10 after epochs 18 and 21, one evaluation at
  the end, the 3 newest epoch checkpoints kept (plus latest.pth).

Measured on an idle 2-core CPU (2026-11-25, torch 2.13.0), `python -m detection.train` as is: about 31 s per
epoch, 11 min 16 s in all, bbox AP 0.642 (AP50 0.867, AP75 0.775) / segm AP 0.556 on the 100 val images (the same
AP in 11 min 53 s before the CPU NMS kernel was vectorised).
Shorter schedules of the same config, to show the spread: 18 epochs (steps after 14 and 17) took 9 min 36 s and
reached bbox AP 0.512 / segm AP 0.432, and 0.581 / 0.499 in a run that differed only in the last digits of the
second anchor scale — a from-scratch run this short varies by several AP points. Before the anchor and mask
changes (one anchor scale, 28×28 masks) 18 epochs reached bbox AP 0.533 in 14 min 20 s."""

from detection.config import Config, DataConfig, SolverConfig
from detection.modeling.config import (
    AnchorConfig,
    BackboneConfig,
    BoxHeadConfig,
    FPNConfig,
    MaskHeadConfig,
    MatcherConfig,
    ModelConfig,
    ProposalConfig,
    RCNNStageConfig,
    RoIHeadConfig,
    RoIPoolerConfig,
    RPNConfig,
    SamplerConfig,
)

NUM_CLASSES = 4  # circle, square, triangle, star
CHANNELS = 64

config = Config(
    name="shapes_mask_rcnn_s14",
    model=ModelConfig(
        kind="mask_rcnn",
        backbone=BackboneConfig(name="resnest14", frozen_stages=-1, norm="bn", norm_eval=False),
        fpn=FPNConfig(in_channels=(256, 512, 1024, 2048), out_channels=CHANNELS, num_outs=5),
        rpn=RPNConfig(
            in_channels=CHANNELS,
            feat_channels=CHANNELS,
            anchors=AnchorConfig(scales=(4.0, 4.0 * 2**0.5)),
            sampler=SamplerConfig(num=128, pos_fraction=0.5, add_gt_as_proposals=False),
            train_proposals=ProposalConfig(nms_pre=500, nms_iou=0.7, max_per_img=200),
            test_proposals=ProposalConfig(nms_pre=300, nms_iou=0.7, max_per_img=100),
        ),
        roi_head=RoIHeadConfig(
            stages=(
                RCNNStageConfig(
                    box_head=BoxHeadConfig(num_classes=NUM_CLASSES, in_channels=CHANNELS, num_convs=0,
                                           conv_channels=CHANNELS, num_fcs=2, fc_channels=256, norm="bn"),
                    matcher=MatcherConfig(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=True),
                    sampler=SamplerConfig(num=128, pos_fraction=0.25, add_gt_as_proposals=True),
                ),
            ),
            mask_head=MaskHeadConfig(num_classes=NUM_CLASSES, in_channels=CHANNELS, num_convs=2,
                                     conv_channels=CHANNELS, norm="bn", mask_size=14,
                                     pooler=RoIPoolerConfig(output_size=7)),
        ),
    ),
    data=DataConfig(dataset="shapes", root="", with_masks=True, shapes_num_train=400, shapes_num_val=100,
                    shapes_image_size=96, train_scales=(80, 112), scale_mode="range", max_size=192, test_scale=96,
                    min_size=0, images_per_gpu=4, workers_per_gpu=1, resize_mode="antialias"),
    solver=SolverConfig(lr=0.04, base_batch_size=16, warmup_iters=50, lr_steps=(18, 21), epochs=22,
                        eval_interval=22, log_interval=10, keep_checkpoints=3),
)
