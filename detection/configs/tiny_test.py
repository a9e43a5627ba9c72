"""A tiny Mask R-CNN on ResNeSt-14 for tests and smoke runs: narrow FPN and heads, few classes, small sample and
proposal counts. Switch `kind` to "faster_rcnn" and drop the mask head for the box-only variant."""

from detection.config import Config, DataConfig, SolverConfig
from detection.modeling.config import (
    BackboneConfig,
    BoxHeadConfig,
    FPNConfig,
    MaskHeadConfig,
    ModelConfig,
    ProposalConfig,
    RCNNStageConfig,
    RoIHeadConfig,
    RPNConfig,
    SamplerConfig,
)

NUM_CLASSES = 3
CHANNELS = 32

config = Config(
    name="tiny_test",
    model=ModelConfig(
        kind="mask_rcnn",
        backbone=BackboneConfig(name="resnest14", frozen_stages=1, norm="bn", norm_eval=False),
        fpn=FPNConfig(in_channels=(256, 512, 1024, 2048), out_channels=CHANNELS, num_outs=5),
        rpn=RPNConfig(
            in_channels=CHANNELS,
            feat_channels=CHANNELS,
            sampler=SamplerConfig(num=64, pos_fraction=0.5, add_gt_as_proposals=False),
            train_proposals=ProposalConfig(nms_pre=200, nms_iou=0.7, max_per_img=100),
            test_proposals=ProposalConfig(nms_pre=100, nms_iou=0.7, max_per_img=50),
        ),
        roi_head=RoIHeadConfig(
            stages=(
                RCNNStageConfig(
                    box_head=BoxHeadConfig(
                        num_classes=NUM_CLASSES, in_channels=CHANNELS, num_convs=1, conv_channels=CHANNELS,
                        fc_channels=64, norm="bn",
                    ),
                    sampler=SamplerConfig(num=64, pos_fraction=0.25, add_gt_as_proposals=True),
                ),
            ),
            mask_head=MaskHeadConfig(num_classes=NUM_CLASSES, in_channels=CHANNELS, num_convs=1,
                                     conv_channels=CHANNELS, norm="bn"),
        ),
    ),
    data=DataConfig(dataset="shapes", root="", with_masks=True, train_scales=(128,), scale_mode="value",
                    max_size=160, test_scale=128, images_per_gpu=2),
    solver=SolverConfig(lr=0.01, base_batch_size=2, warmup_iters=10, epochs=1, amp=False),
)
