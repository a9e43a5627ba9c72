"""The one place that turns a model config (detection.modeling.config.ModelConfig) into modules."""

import torch
from torch import nn

import resnest_cuda

from .modeling.anchors import AnchorGenerator
from .modeling.box_head import ConvFCBoxHead
from .modeling.box_ops import BoxCoder
from .modeling.cascade import CascadeRoIHeads
from .modeling.config import (
    MODEL_KINDS,
    BackboneConfig,
    BoxHeadConfig,
    FPNConfig,
    MaskHeadConfig,
    MatcherConfig,
    ModelConfig,
    RoIHeadConfig,
    RPNConfig,
    SamplerConfig,
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
from .pretrained import load_backbone_pretrained


def build_model(cfg: ModelConfig, backbone: nn.Module | None = None, *, pretrained: bool = False) -> GeneralizedRCNN:
    """Build the detector of `cfg`. `backbone` overrides cfg.backbone with an already built module (it must have
    the same interface: forward(x) -> list of feature maps, attribute `out_channels`). With `pretrained` (training
    from a config) the backbone starts from cfg.backbone.pretrained when that is set; inference, which loads a whole
    detector checkpoint afterwards, leaves it False."""
    if cfg.kind not in MODEL_KINDS:
        raise ValueError(f"kind: expected one of {MODEL_KINDS}, got {cfg.kind!r}")
    if cfg.kind.startswith("cascade") != (len(cfg.roi_head.stages) > 1):
        raise ValueError(f"kind {cfg.kind!r}: cascade models need several roi_head.stages, the others exactly one")
    wants_mask = cfg.kind in ("mask_rcnn", "cascade_mask_rcnn")
    if wants_mask != (cfg.roi_head.mask_head is not None):
        raise ValueError(f"kind {cfg.kind!r}: roi_head.mask_head must be {'set' if wants_mask else 'None'}")
    backbone = backbone if backbone is not None else build_backbone(cfg.backbone, pretrained=pretrained)
    if tuple(backbone.out_channels) != tuple(cfg.fpn.in_channels):
        raise ValueError(f"fpn.in_channels {cfg.fpn.in_channels} != backbone out_channels {backbone.out_channels}")
    model = GeneralizedRCNN(
        transform=ImageTransform(cfg.pixel_mean, cfg.pixel_std, cfg.size_divisor, cfg.channels_last),
        backbone=backbone,
        neck=build_fpn(cfg.fpn),
        rpn_head=build_rpn(cfg.rpn),
        roi_head=build_roi_head(cfg.roi_head),
        mask_threshold=cfg.roi_head.mask_head.mask_thr_binary if wants_mask else 0.5,
    )
    # Conv weights in the activations' format: no per-call layout conversion inside the convolutions.
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def build_backbone(cfg: BackboneConfig, pretrained: bool = False) -> nn.Module:
    """The ResNeSt of `cfg`; with `pretrained` and cfg.pretrained set, its weights are loaded before the stages are
    frozen."""
    constructor = getattr(resnest_cuda, cfg.name, None)
    if constructor is None:
        raise ValueError(f"backbone.name: resnest_cuda has no constructor {cfg.name!r}")
    load = pretrained and bool(cfg.pretrained)
    backbone = constructor(
        num_classes=None,
        out_indices=tuple(cfg.out_indices),
        frozen_stages=-1 if load else cfg.frozen_stages,
        norm_layer=cfg.norm,
        norm_eval=cfg.norm_eval,
    )
    if load:
        load_backbone_pretrained(backbone, cfg.pretrained)
        backbone.freeze_stages(cfg.frozen_stages)
    return backbone


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
        sampler=_build_sampler(cfg.sampler),
        train_settings=ProposalSettings(**vars(cfg.train_proposals)),
        test_settings=ProposalSettings(**vars(cfg.test_proposals)),
        allowed_border=cfg.allowed_border,
        box_loss=cfg.loss.box_loss,
        box_loss_beta=cfg.loss.beta,
        cls_loss_weight=cfg.loss.cls_weight,
        box_loss_weight=cfg.loss.box_weight,
    )


def build_roi_head(cfg: RoIHeadConfig) -> StandardRoIHeads | CascadeRoIHeads:
    """One stage: StandardRoIHeads (Faster/Mask R-CNN). Several: CascadeRoIHeads, with one mask head per stage."""
    if len(cfg.stages) == 0:
        raise ValueError("roi_head.stages: at least one stage is needed")
    head_cfgs = [stage.box_head for stage in cfg.stages]
    first = head_cfgs[0]
    for h in head_cfgs[1:]:
        if (h.num_classes, h.loss.box_loss, h.loss.beta, h.loss.cls_weight, h.loss.box_weight) != (
            first.num_classes, first.loss.box_loss, first.loss.beta, first.loss.cls_weight, first.loss.box_weight
        ):
            raise ValueError("roi_head.stages: every stage needs the same num_classes and loss settings")
    mask_cfg = cfg.mask_head
    mask_pooler = None
    if mask_cfg is not None:
        if mask_cfg.num_classes != first.num_classes:
            raise ValueError("mask_head.num_classes must equal the box head's num_classes")
        if mask_cfg.mask_size != 2 * mask_cfg.pooler.output_size:
            raise ValueError("mask_head.mask_size must be 2 x mask_head.pooler.output_size (one 2x upsampling)")
        mask_pooler = _build_pooler(mask_cfg.pooler)
    common = dict(
        box_pooler=_build_pooler(cfg.box_pooler),
        box_loss=first.loss.box_loss,
        box_loss_beta=first.loss.beta,
        score_thr=cfg.test.score_thr,
        nms_iou=cfg.test.nms_iou,
        max_per_img=cfg.test.max_per_img,
        mask_pooler=mask_pooler,
        mask_loss_weight=mask_cfg.loss_weight if mask_cfg is not None else 1.0,
        mask_slots_per_image=mask_cfg.mask_slots_per_image if mask_cfg is not None else None,
    )
    if len(cfg.stages) > 1:
        return CascadeRoIHeads(
            bbox_heads=[_build_box_head(h, cfg.box_pooler.output_size) for h in head_cfgs],
            coders=[BoxCoder(h.coder.target_means, h.coder.target_stds) for h in head_cfgs],
            matchers=[build_matcher(stage.matcher) for stage in cfg.stages],
            samplers=[_build_sampler(stage.sampler) for stage in cfg.stages],
            stage_loss_weights=[stage.loss_weight for stage in cfg.stages],
            cls_loss_weight=first.loss.cls_weight,
            box_loss_weight=first.loss.box_weight,
            mask_heads=[_build_mask_head(mask_cfg) for _ in cfg.stages] if mask_cfg is not None else None,
            **common,
        )
    stage = cfg.stages[0]
    return StandardRoIHeads(
        bbox_head=_build_box_head(first, cfg.box_pooler.output_size),
        coder=BoxCoder(first.coder.target_means, first.coder.target_stds),
        matcher=build_matcher(stage.matcher),
        sampler=_build_sampler(stage.sampler),
        cls_loss_weight=first.loss.cls_weight * stage.loss_weight,
        box_loss_weight=first.loss.box_weight * stage.loss_weight,
        mask_head=_build_mask_head(mask_cfg) if mask_cfg is not None else None,
        **common,
    )


def _build_box_head(cfg: BoxHeadConfig, roi_size: int) -> ConvFCBoxHead:
    return ConvFCBoxHead(
        in_channels=cfg.in_channels,
        roi_size=roi_size,
        num_classes=cfg.num_classes,
        num_convs=cfg.num_convs,
        conv_channels=cfg.conv_channels,
        num_fcs=cfg.num_fcs,
        fc_channels=cfg.fc_channels,
        norm=make_norm_factory(cfg.norm),
        class_agnostic=cfg.class_agnostic,
    )


def _build_mask_head(cfg: MaskHeadConfig) -> FCNMaskHead:
    return FCNMaskHead(cfg.in_channels, cfg.num_classes, cfg.num_convs, cfg.conv_channels, make_norm_factory(cfg.norm))


def _build_sampler(cfg: SamplerConfig) -> RandomSampler:
    return RandomSampler(cfg.num, cfg.pos_fraction, cfg.add_gt_as_proposals)


def _build_pooler(cfg) -> MultiScaleRoIAlign:
    return MultiScaleRoIAlign(cfg.output_size, cfg.featmap_strides, cfg.sampling_ratio, cfg.aligned, cfg.finest_scale)
