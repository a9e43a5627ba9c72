"""R-CNN heads on proposals: training targets (match + sample with GT added as proposals), box and mask losses,
and inference post-processing. The per-stage steps are functions so that a cascade can run them once per stage."""

from typing import NamedTuple

import torch
from torch import nn

import resnest_cuda

from .box_head import ConvFCBoxHead
from .box_ops import BoxCoder, box_iou
from .losses import box_regression_loss, mask_bce_loss, softmax_ce_loss
from .mask_head import FCNMaskHead, mask_targets
from .matcher import POSITIVE, Matcher
from .poolers import MultiScaleRoIAlign, boxes_to_rois
from .sampler import RandomSampler


class SampledRoIs(NamedTuple):
    """Training RoIs of a batch, positives first within each image. R = sampled RoIs over the batch."""

    rois: torch.Tensor  # [R, 5] (batch_idx, x1, y1, x2, y2)
    labels: torch.Tensor  # int64 [R], num_classes for background
    box_targets: torch.Tensor  # fp32 [R, 4] encoded deltas (zero for negatives)
    pos: torch.Tensor  # bool [R]
    matched_idxs: torch.Tensor  # int64 [R], GT index within the RoI's image (0 for negatives)
    is_gt: torch.Tensor  # bool [R], the RoI is a GT box added as a proposal (a cascade drops these when refining)


def sampling_keys(boxes: torch.Tensor) -> torch.Tensor | None:
    """The random keys of the R-CNN sampler's two draws for these candidate boxes ([N, 4] -> float [2, N] in
    [0, 1)), or None for the sampler's own `torch.rand` draws. Tests substitute keys that depend on each box alone,
    so that two layouts of the same boxes (padded or compacted) sample the same RoIs."""
    return None


def label_and_sample_proposals(
    proposals: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    matcher: Matcher,
    sampler: RandomSampler,
    coder: BoxCoder,
    num_classes: int,
) -> SampledRoIs:
    """Match proposals to GT, add the GT boxes as positives of themselves (when sampler.add_gt_as_proposals),
    sample, and encode.

    As in mmdetection, the matcher sees the proposals alone: were the GT boxes in the IoU matrix, every GT's best
    IoU would be 1.0 (itself) and `match_low_quality` could never give a proposal to a GT. The GT boxes are
    prepended afterwards, each matched to itself (even when degenerate or tied with another GT)."""
    parts = []
    for i, (boxes, target) in enumerate(zip(proposals, targets)):
        gt_boxes = target["boxes"].to(boxes)
        gt_labels = target["labels"]
        num_gt = gt_boxes.shape[0]
        matched_idxs, match_labels = matcher(box_iou(gt_boxes, boxes))
        if sampler.add_gt_as_proposals:
            boxes = torch.cat([gt_boxes, boxes])
            matched_idxs = torch.cat([torch.arange(num_gt, device=boxes.device), matched_idxs])
            match_labels = torch.cat([match_labels.new_full((num_gt,), POSITIVE), match_labels])
        pos, neg = sampler(match_labels, keys=sampling_keys(boxes))
        # positives then negatives, each in index order: one nonzero (one host sync) and a stable sort on the device
        idx = torch.nonzero(pos | neg).squeeze(1)
        idx = idx[torch.argsort((~pos[idx]).to(torch.uint8), stable=True)]
        sampled, matched, is_pos = boxes[idx], matched_idxs[idx], pos[idx]
        is_gt = idx < num_gt if sampler.add_gt_as_proposals else torch.zeros_like(is_pos)
        if num_gt > 0:
            labels = torch.where(is_pos, gt_labels[matched], num_classes)
            encoded = torch.where(is_pos[:, None], coder.encode(sampled, gt_boxes[matched]), 0.0)
        else:
            labels = torch.full_like(matched, num_classes)
            encoded = sampled.new_zeros(sampled.shape)
        batch_idx = sampled.new_full((sampled.shape[0], 1), float(i))
        parts.append((torch.cat([batch_idx, sampled], 1), labels, encoded, is_pos, matched, is_gt))
    return SampledRoIs(*(torch.cat(p) for p in zip(*parts)))


def box_head_losses(
    head: ConvFCBoxHead,
    cls_logits: torch.Tensor,
    box_deltas: torch.Tensor,
    samples: SampledRoIs,
    box_loss: str = "l1",
    box_loss_beta: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax CE over all sampled RoIs and box regression of positives, both divided by the number of RoIs."""
    num_rois = samples.labels.shape[0]
    loss_cls = softmax_ce_loss(cls_logits, samples.labels, num_rois)
    deltas = head.select_deltas(box_deltas, samples.labels)
    weights = samples.pos[:, None].to(deltas.dtype).expand_as(deltas)
    loss_box = box_regression_loss(box_loss, deltas, samples.box_targets, weights, num_rois, box_loss_beta)
    return loss_cls, loss_box


def decode_predictions(
    head: ConvFCBoxHead, coder: BoxCoder, box_deltas: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """Per-class boxes of one image: deltas [K, 4C] or [K, 4], RoI boxes [K, 4] -> fp32 [K, C, 4] clipped."""
    # (K, 4C) -> (K, C, 4); C = 1 when class-agnostic. C spelled out: -1 is ambiguous for K = 0 (no proposals).
    deltas = box_deltas.view(box_deltas.shape[0], box_deltas.shape[1] // 4, 4)
    decoded = coder.decode(boxes[:, None, :], deltas, max_shape=image_size)
    return decoded.expand(-1, head.num_classes, 4)


def postprocess_detections(
    boxes: torch.Tensor, scores: torch.Tensor, score_thr: float, nms_iou: float, max_per_img: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-wise NMS of one image. boxes [K, C, 4], scores [K, C] (foreground classes only) ->
    boxes [D, 4], scores [D], labels int64 [D] with D <= max_per_img, by descending score."""
    keep_k, keep_c = torch.nonzero(scores > score_thr, as_tuple=True)
    det_boxes, det_scores = boxes[keep_k, keep_c], scores[keep_k, keep_c]
    keep = resnest_cuda.batched_nms(det_boxes, det_scores, keep_c, nms_iou)[:max_per_img]
    return det_boxes[keep], det_scores[keep], keep_c[keep]


def mask_head_loss(
    pooler: MultiScaleRoIAlign,
    head: FCNMaskHead,
    features: list[torch.Tensor],
    samples: SampledRoIs,
    targets: list[dict[str, torch.Tensor]],
) -> torch.Tensor:
    """Per-class BCE of the mask head on the positive sampled RoIs, against their GT masks cropped to the RoI."""
    pos_idx = torch.nonzero(samples.pos).squeeze(1)
    rois, labels, matched = samples.rois[pos_idx], samples.labels[pos_idx], samples.matched_idxs[pos_idx]
    mask_logits = head.select_class(head(pooler(features, rois)), labels)
    mask_size = mask_logits.shape[-1]
    gt = []
    for i, target in enumerate(targets):
        in_image = torch.nonzero(rois[:, 0] == i).squeeze(1)
        if "masks" not in target:
            raise ValueError(f"targets[{i}]: a mask model needs 'masks' (uint8 [N, H, W])")
        gt.append(mask_targets(target["masks"], rois[in_image, 1:], matched[in_image], mask_size))
    return mask_bce_loss(mask_logits, torch.cat(gt))


def detections_per_image(
    head: ConvFCBoxHead,
    coder: BoxCoder,
    proposals: list[torch.Tensor],
    box_deltas: torch.Tensor,
    scores: torch.Tensor,
    image_sizes: list[tuple[int, int]],
    score_thr: float,
    nms_iou: float,
    max_per_img: int,
) -> list[dict[str, torch.Tensor]]:
    """Decode a batch of RoIs (proposals per image, deltas [K, 4C or 4], foreground scores [K, C], K = all RoIs)
    and post-process image by image -> one dict of `boxes`, `scores`, `labels` per image."""
    counts = [p.shape[0] for p in proposals]
    detections = []
    for boxes, deltas, scores_i, size in zip(proposals, box_deltas.split(counts), scores.split(counts), image_sizes):
        per_class = decode_predictions(head, coder, deltas, boxes, size)
        det_boxes, det_scores, det_labels = postprocess_detections(per_class, scores_i, score_thr, nms_iou, max_per_img)
        detections.append({"boxes": det_boxes, "scores": det_scores, "labels": det_labels})
    return detections


class StandardRoIHeads(nn.Module):
    """One box stage (`bbox_head`) and an optional `mask_head`, as in Faster and Mask R-CNN.

    forward(features, proposals, image_sizes, targets) -> (detections, losses). In training `detections` is empty
    and `losses` holds loss_cls, loss_bbox (and loss_mask); in eval `detections` is one dict per image with
    `boxes` [D, 4] fp32 xyxy (input-image pixels), `scores` [D], `labels` int64 [D] (0-based) and, with a mask
    head, `mask_probs` [D, M, M] (probabilities of the predicted class, in box coordinates).
    """

    def __init__(
        self,
        box_pooler: MultiScaleRoIAlign,
        bbox_head: ConvFCBoxHead,
        coder: BoxCoder,
        matcher: Matcher,
        sampler: RandomSampler,
        box_loss: str = "l1",
        box_loss_beta: float = 1.0,
        cls_loss_weight: float = 1.0,
        box_loss_weight: float = 1.0,
        score_thr: float = 0.05,
        nms_iou: float = 0.5,
        max_per_img: int = 100,
        mask_pooler: MultiScaleRoIAlign | None = None,
        mask_head: FCNMaskHead | None = None,
        mask_loss_weight: float = 1.0,
    ):
        super().__init__()
        if (mask_pooler is None) != (mask_head is None):
            raise ValueError("mask_pooler and mask_head must be given together")
        self.box_pooler = box_pooler
        self.bbox_head = bbox_head
        self.coder = coder
        self.matcher = matcher
        self.sampler = sampler
        self.box_loss = box_loss
        self.box_loss_beta = box_loss_beta
        self.cls_loss_weight = cls_loss_weight
        self.box_loss_weight = box_loss_weight
        self.score_thr = score_thr
        self.nms_iou = nms_iou
        self.max_per_img = max_per_img
        self.mask_pooler = mask_pooler
        self.mask_head = mask_head
        self.mask_loss_weight = mask_loss_weight

    @property
    def num_classes(self) -> int:
        return self.bbox_head.num_classes

    def forward(
        self,
        features: list[torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets: required in training mode")
            return [], self._forward_train(features, proposals, targets)
        detections = self._forward_box_inference(features, proposals, image_sizes)
        if self.mask_head is not None:
            self._forward_mask_inference(features, detections)
        return detections, {}

    def _forward_box(self, features: list[torch.Tensor], rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.bbox_head(self.box_pooler(features, rois))

    def _forward_train(
        self, features: list[torch.Tensor], proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        samples = label_and_sample_proposals(
            proposals, targets, self.matcher, self.sampler, self.coder, self.num_classes
        )
        cls_logits, box_deltas = self._forward_box(features, samples.rois)
        loss_cls, loss_box = box_head_losses(
            self.bbox_head, cls_logits, box_deltas, samples, self.box_loss, self.box_loss_beta
        )
        losses = {"loss_cls": loss_cls * self.cls_loss_weight, "loss_bbox": loss_box * self.box_loss_weight}
        if self.mask_head is not None:
            losses["loss_mask"] = self._forward_mask_train(features, samples, targets) * self.mask_loss_weight
        return losses

    def _forward_mask_train(
        self, features: list[torch.Tensor], samples: SampledRoIs, targets: list[dict[str, torch.Tensor]]
    ) -> torch.Tensor:
        return mask_head_loss(self.mask_pooler, self.mask_head, features, samples, targets)

    def _forward_box_inference(
        self, features: list[torch.Tensor], proposals: list[torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        cls_logits, box_deltas = self._forward_box(features, boxes_to_rois(proposals))
        scores = cls_logits.float().softmax(dim=1)[:, :-1]  # background is the last column
        return detections_per_image(
            self.bbox_head, self.coder, proposals, box_deltas, scores, image_sizes,
            self.score_thr, self.nms_iou, self.max_per_img,
        )

    def _forward_mask_inference(self, features: list[torch.Tensor], detections: list[dict[str, torch.Tensor]]):
        """Adds `mask_probs` [D, M, M] to each detection dict."""
        rois = boxes_to_rois([d["boxes"] for d in detections])
        labels = torch.cat([d["labels"] for d in detections])
        mask_logits = self.mask_head.select_class(self.mask_head(self.mask_pooler(features, rois)), labels)
        probs = mask_logits.float().sigmoid()
        for det, probs_i in zip(detections, probs.split([d["boxes"].shape[0] for d in detections])):
            det["mask_probs"] = probs_i
