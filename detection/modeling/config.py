"""Model configuration: typed dataclasses, one per part of the detector. `detection.build.build_model` is the one
place that turns a `ModelConfig` into modules; modules themselves never see these objects.

Defaults are the Faster/Mask R-CNN values of the mmdetection ResNeSt seed configs (SPEC §5). The box head of R-CNN
is described as a tuple of stages (`RoIHeadConfig.stages`): Faster and Mask R-CNN have one, Cascade R-CNN three.
"""

from dataclasses import dataclass, field

MODEL_KINDS = ("faster_rcnn", "mask_rcnn", "cascade_rcnn", "cascade_mask_rcnn")
NORM_KINDS = ("bn", "syncbn", "gn", "frozen_bn", "none")
BOX_LOSSES = ("l1", "smooth_l1")


@dataclass
class BackboneConfig:
    """A ResNeSt from `resnest_cuda` (resnest14/26/50/101/200/269)."""

    name: str = "resnest50"
    out_indices: tuple[int, ...] = (0, 1, 2, 3)
    frozen_stages: int = 1  # stem and stage 1 frozen (and kept in eval mode)
    norm: str = "syncbn"
    norm_eval: bool = False
    # ImageNet initialisation for training: a checkpoint path, a URL (cached by torch.hub) or a model-zoo name such
    # as "open-mmlab://resnest50" (detection/pretrained.py); "" starts from random weights.
    pretrained: str = ""


@dataclass
class FPNConfig:
    in_channels: tuple[int, ...] = (256, 512, 1024, 2048)
    out_channels: int = 256
    num_outs: int = 5  # P2-P6; P6 = max_pool2d(P5, kernel 1, stride 2)


@dataclass
class AnchorConfig:
    scales: tuple[float, ...] = (8.0,)
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    strides: tuple[int, ...] = (4, 8, 16, 32, 64)


@dataclass
class MatcherConfig:
    """Max-IoU assignment: IoU >= pos_iou_thr positive, < neg_iou_thr negative, in between ignored; with
    match_low_quality each GT also claims its best-overlapping boxes when that IoU is >= min_pos_iou."""

    pos_iou_thr: float = 0.5
    neg_iou_thr: float = 0.5
    min_pos_iou: float = 0.5
    match_low_quality: bool = False


@dataclass
class SamplerConfig:
    num: int = 512
    pos_fraction: float = 0.25
    add_gt_as_proposals: bool = True


@dataclass
class ProposalConfig:
    """RPN proposal generation: top `nms_pre` per level, NMS per level, top `max_per_img` overall."""

    nms_pre: int = 1000
    nms_iou: float = 0.7
    max_per_img: int = 1000
    min_box_size: float = 0.0  # boxes with width or height <= this are dropped


@dataclass
class BoxCoderConfig:
    target_means: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    target_stds: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)


@dataclass
class LossConfig:
    """Box regression loss ("l1" or "smooth_l1" with `beta`) and the weights of the two terms."""

    box_loss: str = "l1"
    beta: float = 1.0  # only for smooth_l1
    cls_weight: float = 1.0
    box_weight: float = 1.0


@dataclass
class RPNConfig:
    in_channels: int = 256
    feat_channels: int = 256
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    coder: BoxCoderConfig = field(default_factory=BoxCoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)  # classification is always sigmoid CE
    matcher: MatcherConfig = field(
        default_factory=lambda: MatcherConfig(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=True)
    )
    sampler: SamplerConfig = field(
        default_factory=lambda: SamplerConfig(num=256, pos_fraction=0.5, add_gt_as_proposals=False)
    )
    allowed_border: float = -1.0  # < 0: every anchor may be assigned; >= 0: anchors must lie inside the image ± this
    train_proposals: ProposalConfig = field(
        default_factory=lambda: ProposalConfig(nms_pre=2000, nms_iou=0.7, max_per_img=1000)
    )
    test_proposals: ProposalConfig = field(
        default_factory=lambda: ProposalConfig(nms_pre=1000, nms_iou=0.7, max_per_img=1000)
    )


@dataclass
class RoIPoolerConfig:
    output_size: int = 7
    sampling_ratio: int = 0  # <= 0: adaptive, ceil(roi_size / output_size) samples per bin
    aligned: bool = True
    featmap_strides: tuple[int, ...] = (4, 8, 16, 32)
    finest_scale: float = 56.0


@dataclass
class BoxHeadConfig:
    """Shared4Conv1FCBBoxHead: `num_convs` 3x3 convs (+norm+ReLU), `num_fcs` fcs, then fc_cls (num_classes + 1,
    background last) and fc_reg (4 * num_classes, or 4 when class_agnostic)."""

    num_classes: int = 80
    in_channels: int = 256
    num_convs: int = 4
    conv_channels: int = 256
    num_fcs: int = 1
    fc_channels: int = 1024
    norm: str = "syncbn"
    class_agnostic: bool = False
    coder: BoxCoderConfig = field(default_factory=lambda: BoxCoderConfig(target_stds=(0.1, 0.1, 0.2, 0.2)))
    loss: LossConfig = field(default_factory=LossConfig)  # classification is always softmax CE


@dataclass
class RCNNStageConfig:
    """One R-CNN box stage: its head, and how training proposals are matched and sampled for it."""

    box_head: BoxHeadConfig = field(default_factory=BoxHeadConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    loss_weight: float = 1.0  # cascade stage_loss_weights


@dataclass
class MaskHeadConfig:
    """FCNMaskHead: `num_convs` 3x3 convs (+norm+ReLU), ConvTranspose2d 2x2 stride 2 + ReLU, 1x1 to num_classes."""

    num_classes: int = 80
    in_channels: int = 256
    num_convs: int = 4
    conv_channels: int = 256
    norm: str = "syncbn"
    mask_size: int = 28  # = 2 * pooler output_size
    pooler: RoIPoolerConfig = field(default_factory=lambda: RoIPoolerConfig(output_size=14))
    loss_weight: float = 1.0
    mask_thr_binary: float = 0.5
    # Training: the mask head's rows per image, pooled over the batch (N images: N * mask_slots_per_image rows for
    # all their positives, at most N * the sampler's pos_limit). More positives than rows: a random subset keeps a
    # row, the others are counted (`mask_dropped` in the training log). None: every positive gets a row, and
    # fixed-size (sync-free) training runs the head on pos_limit rows per image, positives or not.
    mask_slots_per_image: int | None = None


@dataclass
class TestConfig:
    score_thr: float = 0.05
    nms_iou: float = 0.5  # class-wise NMS
    max_per_img: int = 100


@dataclass
class RoIHeadConfig:
    box_pooler: RoIPoolerConfig = field(default_factory=RoIPoolerConfig)
    stages: tuple[RCNNStageConfig, ...] = field(default_factory=lambda: (RCNNStageConfig(),))
    mask_head: MaskHeadConfig | None = None
    test: TestConfig = field(default_factory=TestConfig)


@dataclass
class ModelConfig:
    kind: str = "faster_rcnn"  # one of MODEL_KINDS
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_head: RoIHeadConfig = field(default_factory=RoIHeadConfig)
    # ResNeSt normalisation of 0-255 RGB input (SPEC §2); batches are padded to a multiple of size_divisor.
    pixel_mean: tuple[float, float, float] = (123.68, 116.779, 103.939)
    pixel_std: tuple[float, float, float] = (58.393, 57.12, 57.375)
    size_divisor: int = 32
    # Run the convolutional parts in channels_last (NHWC) memory format: the batch is built in it, conv weights are
    # stored in it, and every op on the way (fused split attention, FPN, RoIAlign) keeps it. Same results, faster
    # convolutions on CPUs (oneDNN) and on GPUs with tensor cores; state dicts are unaffected.
    channels_last: bool = False


def num_classes_of(cfg: ModelConfig) -> int:
    """The detector's number of object classes (background excluded), from its first box head."""
    return cfg.roi_head.stages[0].box_head.num_classes


def set_num_classes(cfg: ModelConfig, num_classes: int) -> None:
    """Set the class count of every box head of every stage and of the mask head, in place."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"model.num_classes: expected a positive integer, got {num_classes!r}")
    for stage in cfg.roi_head.stages:
        stage.box_head.num_classes = num_classes
    if cfg.roi_head.mask_head is not None:
        cfg.roi_head.mask_head.num_classes = num_classes
