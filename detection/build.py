"""The one place that turns a model config (detection.modeling.config.ModelConfig) into modules."""

from torch import nn

import resnest_cuda

from .modeling.anchors import AnchorGenerator
from .modeling.box_head import ConvFCBoxHead
from .modeling.box_ops import BoxCoder
from .modeling.config import (
    MODEL_KINDS,
    BackboneConfig,
    FPNConfig,
    MatcherConfig,
    ModelConfig,
    RoIHeadConfig,
    RPNConfig,
)
from .modeling.fpn import FPN
from .modeling.layers import make_norm_factory
from .modeling.mask_head import FCNMaskHead
from .modeling.matcher import Matcher
from .modeling.poolers import MultiScaleRoIAlign
from .modeling.rcnn import GeneralizedRCNN, ImageTransform
from .modeling.roi_heads import StandardRoIHeads
from .modeling.rpn import ProposalSettings, RPNHead
from .modeling.sampler import RandomSampler


def build_model(cfg: ModelConfig, backbone: nn.Module | None = None) -> GeneralizedRCNN:
    """Build the detector of `cfg`. `backbone` overrides cfg.backbone with an already built module (it must have
    the same interface: forward(x) -> list of feature maps, attribute `out_channels`)."""
    if cfg.kind not in MODEL_KINDS:
        raise ValueError(f"kind: expected one of {MODEL_KINDS}, got {cfg.kind!r}")
    if cfg.kind.startswith("cascade"):
        raise NotImplementedError(f"kind {cfg.kind!r}: cascade R-CNN heads are not implemented yet")
    wants_mask = cfg.kind in ("mask_rcnn", "cascade_mask_rcnn")
    if wants_mask != (cfg.roi_head.mask_head is not None):
        raise ValueError(f"kind {cfg.kind!r}: roi_head.mask_head must be {'set' if wants_mask else 'None'}")
    backbone = backbone if backbone is not None else build_backbone(cfg.backbone)
    if tuple(backbone.out_channels) != tuple(cfg.fpn.in_channels):
        raise ValueError(f"fpn.in_channels {cfg.fpn.in_channels} != backbone out_channels {backbone.out_channels}")
    return GeneralizedRCNN(
        transform=ImageTransform(cfg.pixel_mean, cfg.pixel_std, cfg.size_divisor),
        backbone=backbone,
        neck=build_fpn(cfg.fpn),
        rpn_head=build_rpn(cfg.rpn),
        roi_head=build_roi_head(cfg.roi_head),
        mask_threshold=cfg.roi_head.mask_head.mask_thr_binary if wants_mask else 0.5,
    )


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    constructor = getattr(resnest_cuda, cfg.name, None)
    if constructor is None:
        raise ValueError(f"backbone.name: resnest_cuda has no constructor {cfg.name!r}")
    return constructor(
        num_classes=None,
        out_indices=tuple(cfg.out_indices),
        frozen_stages=cfg.frozen_stages,
        norm_layer=cfg.norm,
        norm_eval=cfg.norm_eval,
    )


def build_fpn(cfg: FPNConfig) -> FPN:
    return FPN(tuple(cfg.in_channels), cfg.out_channels, cfg.num_outs)


def build_matcher(cfg: MatcherConfig) -> Matcher:
    return Matcher(cfg.pos_iou_thr, cfg.neg_iou_thr, cfg.min_pos_iou, cfg.match_low_quality)


def build_rpn(cfg: RPNConfig) -> RPNHead:
    anchors = AnchorGenerator(cfg.anchors.strides, cfg.anchors.scales, cfg.anchors.ratios)
    return RPNHead(
        in_channels=cfg.in_channels,
        feat_channels=cfg.feat_channels,
        anchor_generator=anchors,
        coder=BoxCoder(cfg.coder.target_means, cfg.coder.target_stds),
        matcher=build_matcher(cfg.matcher),
        sampler=RandomSampler(cfg.sampler.num, cfg.sampler.pos_fraction, cfg.sampler.add_gt_as_proposals),
        train_settings=ProposalSettings(**vars(cfg.train_proposals)),
        test_settings=ProposalSettings(**vars(cfg.test_proposals)),
        allowed_border=cfg.allowed_border,
        box_loss=cfg.loss.box_loss,
        box_loss_beta=cfg.loss.beta,
        cls_loss_weight=cfg.loss.cls_weight,
        box_loss_weight=cfg.loss.box_weight,
    )


def build_roi_head(cfg: RoIHeadConfig) -> StandardRoIHeads:
    if len(cfg.stages) != 1:
        raise NotImplementedError(f"roi_head.stages: {len(cfg.stages)} stages need the cascade head (not built yet)")
    stage = cfg.stages[0]
    head_cfg = stage.box_head
    pooler = cfg.box_pooler
    bbox_head = ConvFCBoxHead(
        in_channels=head_cfg.in_channels,
        roi_size=pooler.output_size,
        num_classes=head_cfg.num_classes,
        num_convs=head_cfg.num_convs,
        conv_channels=head_cfg.conv_channels,
        num_fcs=head_cfg.num_fcs,
        fc_channels=head_cfg.fc_channels,
        norm=make_norm_factory(head_cfg.norm),
        class_agnostic=head_cfg.class_agnostic,
    )
    mask_pooler = mask_head = None
    mask_cfg = cfg.mask_head
    if mask_cfg is not None:
        if mask_cfg.num_classes != head_cfg.num_classes:
            raise ValueError("mask_head.num_classes must equal the box head's num_classes")
        if mask_cfg.mask_size != 2 * mask_cfg.pooler.output_size:
            raise ValueError("mask_head.mask_size must be 2 x mask_head.pooler.output_size (one 2x upsampling)")
        mask_pooler = _build_pooler(mask_cfg.pooler)
        mask_head = FCNMaskHead(
            mask_cfg.in_channels, mask_cfg.num_classes, mask_cfg.num_convs, mask_cfg.conv_channels,
            make_norm_factory(mask_cfg.norm),
        )
    return StandardRoIHeads(
        box_pooler=_build_pooler(pooler),
        bbox_head=bbox_head,
        coder=BoxCoder(head_cfg.coder.target_means, head_cfg.coder.target_stds),
        matcher=build_matcher(stage.matcher),
        sampler=RandomSampler(stage.sampler.num, stage.sampler.pos_fraction, stage.sampler.add_gt_as_proposals),
        box_loss=head_cfg.loss.box_loss,
        box_loss_beta=head_cfg.loss.beta,
        cls_loss_weight=head_cfg.loss.cls_weight * stage.loss_weight,
        box_loss_weight=head_cfg.loss.box_weight * stage.loss_weight,
        score_thr=cfg.test.score_thr,
        nms_iou=cfg.test.nms_iou,
        max_per_img=cfg.test.max_per_img,
        mask_pooler=mask_pooler,
        mask_head=mask_head,
        mask_loss_weight=mask_cfg.loss_weight if mask_cfg is not None else 1.0,
    )


def _build_pooler(cfg) -> MultiScaleRoIAlign:
    return MultiScaleRoIAlign(cfg.output_size, cfg.featmap_strides, cfg.sampling_ratio, cfg.aligned, cfg.finest_scale)
