"""Cascade R-CNN heads: a list of box stages trained at rising IoU thresholds, each refining the boxes of the
previous one (and, for Cascade Mask R-CNN, one mask head per stage).

Training, per stage i: match and sample the current proposals with stage i's matcher and sampler (GT boxes added
as proposals), compute the stage's box (and mask) losses scaled by its loss weight, then refine the sampled boxes
with the stage's regression — the predicted class is the assigned label, or the argmax over the non-background
classes for negatives — dropping the GT boxes that were added as proposals. The refined boxes, detached, are the
next stage's proposals.

Inference: run every stage on the boxes refined by the one before; score with the mean of the stages' class logits
and take the boxes of the last stage; with mask heads, average the sigmoid masks of all heads on the final boxes.
Module names follow mmdetection's keys: `bbox_head.{i}`, `mask_head.{i}`.
"""

import torch
from torch import nn

from .box_head import ConvFCBoxHead
from .box_ops import BoxCoder, clip_boxes
from .mask_head import FCNMaskHead
from .matcher import Matcher
from .poolers import MultiScaleRoIAlign, boxes_to_rois
from .roi_heads import (
    SampledRoIs,
    _check_mask_slots,
    box_head_losses,
    detections_per_image,
    gt_mask_inputs,
    label_and_sample_proposals,
    mask_head_loss,
    padding_excluded,
)
from .sampler import RandomSampler


class CascadeRoIHeads(nn.Module):
    """forward(features, proposals, image_sizes, targets) -> (detections, losses), like StandardRoIHeads.

    Losses are named per stage: loss_cls_s{i}, loss_bbox_s{i} (and loss_mask_s{i}). Detections: one dict per
    image with `boxes` [D, 4] fp32 xyxy (input-image pixels), `scores` [D], `labels` int64 [D] (0-based) and, with
    mask heads, `mask_probs` [D, M, M] (mean over the stages' heads)."""

    def __init__(
        self,
        box_pooler: MultiScaleRoIAlign,
        bbox_heads: list[ConvFCBoxHead],
        coders: list[BoxCoder],
        matchers: list[Matcher],
        samplers: list[RandomSampler],
        stage_loss_weights: list[float],
        box_loss: str = "smooth_l1",
        box_loss_beta: float = 1.0,
        cls_loss_weight: float = 1.0,
        box_loss_weight: float = 1.0,
        score_thr: float = 0.05,
        nms_iou: float = 0.5,
        max_per_img: int = 100,
        mask_pooler: MultiScaleRoIAlign | None = None,
        mask_heads: list[FCNMaskHead] | None = None,
        mask_loss_weight: float = 1.0,
        mask_slots_per_image: int | None = None,
    ):
        super().__init__()
        _check_mask_slots(mask_slots_per_image)
        n = len(bbox_heads)
        if not (len(coders) == len(matchers) == len(samplers) == len(stage_loss_weights) == n) or n == 0:
            raise ValueError("bbox_heads, coders, matchers, samplers and stage_loss_weights: one entry per stage")
        if (mask_pooler is None) != (mask_heads is None):
            raise ValueError("mask_pooler and mask_heads must be given together")
        if mask_heads is not None and len(mask_heads) != n:
            raise ValueError(f"mask_heads: expected one per stage ({n}), got {len(mask_heads)}")
        if len({h.num_classes for h in bbox_heads}) != 1:
            raise ValueError("bbox_heads: every stage must have the same num_classes")
        self.box_pooler = box_pooler
        self.bbox_head = nn.ModuleList(bbox_heads)
        self.coders = list(coders)
        self.matchers = list(matchers)
        self.samplers = list(samplers)
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]
        self.box_loss = box_loss
        self.box_loss_beta = box_loss_beta
        self.cls_loss_weight = cls_loss_weight
        self.box_loss_weight = box_loss_weight
        self.score_thr = score_thr
        self.nms_iou = nms_iou
        self.max_per_img = max_per_img
        self.mask_pooler = mask_pooler
        self.mask_head = nn.ModuleList(mask_heads) if mask_heads is not None else None
        self.mask_loss_weight = mask_loss_weight
        self.mask_slots_per_image = mask_slots_per_image  # per stage, as in StandardRoIHeads
        self.train_stats: dict[str, torch.Tensor] = {}  # mask_dropped_s{i}, as StandardRoIHeads' mask_dropped

    @property
    def num_stages(self) -> int:
        return len(self.bbox_head)

    @property
    def num_classes(self) -> int:
        return self.bbox_head[0].num_classes

    def forward(
        self,
        features: list[torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
        proposal_valid: list[torch.Tensor] | None = None,
        static_shapes: bool = False,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """proposal_valid and static_shapes (training) as in `StandardRoIHeads.forward`."""
        if self.training:
            if targets is None:
                raise ValueError("targets: required in training mode")
            return [], self._forward_train(features, proposals, image_sizes, targets, proposal_valid, static_shapes)
        detections = self._forward_box_inference(features, proposals, image_sizes)
        if self.mask_head is not None:
            self._forward_mask_inference(features, detections)
        return detections, {}

    def _forward_train(
        self,
        features: list[torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]],
        proposal_valid: list[torch.Tensor] | None = None,
        static_shapes: bool = False,
    ) -> dict[str, torch.Tensor]:
        losses, stats = {}, {}
        gt_masks = None
        for i in range(self.num_stages):
            samples = self._run_stage_sampling(i, proposals, targets, proposal_valid, compact=not static_shapes)
            rois = samples.rois
            cls_logits, box_deltas = self.bbox_head[i](self.box_pooler(features, rois), padding_excluded(samples))
            loss_cls, loss_box = box_head_losses(
                self.bbox_head[i], cls_logits, box_deltas, samples, self.box_loss, self.box_loss_beta
            )
            weight = self.stage_loss_weights[i]
            losses[f"loss_cls_s{i}"] = loss_cls * (self.cls_loss_weight * weight)
            losses[f"loss_bbox_s{i}"] = loss_box * (self.box_loss_weight * weight)
            if self.mask_head is not None:
                if gt_masks is None:  # converted once, read by every stage
                    gt_masks = gt_mask_inputs(targets, samples.rois.dtype)
                loss_mask, dropped = mask_head_loss(
                    self.mask_pooler, self.mask_head[i], features, samples, gt_masks, self.samplers[i].pos_limit,
                    self.mask_slots_per_image,
                )
                losses[f"loss_mask_s{i}"] = loss_mask * (self.mask_loss_weight * weight)
                if dropped is not None:
                    stats[f"mask_dropped_s{i}"] = dropped
            if i + 1 < self.num_stages:
                proposals, proposal_valid = self._refine_sampled(i, samples, cls_logits, box_deltas, image_sizes)
        self.train_stats = stats
        return losses

    def _run_stage_sampling(
        self,
        i: int,
        proposals: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        proposal_valid: list[torch.Tensor] | None = None,
        compact: bool = True,
    ) -> SampledRoIs:
        return label_and_sample_proposals(
            proposals, targets, self.matchers[i], self.samplers[i], self.coders[i], self.num_classes,
            proposal_valid, compact,
        )

    @torch.no_grad()
    def _refine_sampled(
        self,
        i: int,
        samples: SampledRoIs,
        cls_logits: torch.Tensor,
        box_deltas: torch.Tensor,
        image_sizes: list[tuple[int, int]],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Stage i's regression applied to its sampled RoIs, GT boxes dropped: the next stage's proposals per image
        and, for fixed-size samples, their validity (padding and GT boxes invalid, kept in place: no host sync);
        compacted samples drop them instead (one host sync per image) and return None."""
        predicted = cls_logits[:, :-1].argmax(dim=1)
        labels = torch.where(samples.labels == self.num_classes, predicted, samples.labels)
        deltas = self.bbox_head[i].select_deltas(box_deltas, labels)  # [R, 4]
        coder = self.coders[i]
        if samples.slots_per_image is not None:
            n = samples.slots_per_image
            refined = coder.decode(samples.rois[:, 1:], deltas).split(n)
            keep = (samples.valid & ~samples.is_gt).split(n)
            boxes = [clip_boxes(b, size) for b, size in zip(refined, image_sizes)]
            return boxes, list(keep)
        batch_idx = samples.rois[:, 0]
        out = []
        for b, size in enumerate(image_sizes):
            keep = torch.nonzero((batch_idx == b) & ~samples.is_gt).squeeze(1)  # one host sync for both gathers
            out.append(coder.decode(samples.rois[keep, 1:], deltas[keep], max_shape=size))
        return out, None

    def _forward_box_inference(
        self, features: list[torch.Tensor], proposals: list[torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        counts = [p.shape[0] for p in proposals]
        boxes = proposals
        logits_sum = None
        for i in range(self.num_stages):
            cls_logits, box_deltas = self.bbox_head[i](self.box_pooler(features, boxes_to_rois(boxes)))
            logits_sum = cls_logits.float() if logits_sum is None else logits_sum + cls_logits.float()
            if i + 1 < self.num_stages:
                labels = cls_logits[:, :-1].argmax(dim=1)
                deltas = self.bbox_head[i].select_deltas(box_deltas, labels).split(counts)
                boxes = [
                    self.coders[i].decode(b, d, max_shape=size) for b, d, size in zip(boxes, deltas, image_sizes)
                ]
        scores = (logits_sum / self.num_stages).softmax(dim=1)[:, :-1]  # background is the last column
        return detections_per_image(
            self.bbox_head[-1], self.coders[-1], boxes, box_deltas, scores, image_sizes,
            self.score_thr, self.nms_iou, self.max_per_img,
        )

    def _forward_mask_inference(self, features: list[torch.Tensor], detections: list[dict[str, torch.Tensor]]):
        """Adds `mask_probs` [D, M, M], the mean of every stage head's sigmoid mask, to each detection dict."""
        rois = boxes_to_rois([d["boxes"] for d in detections])
        labels = torch.cat([d["labels"] for d in detections])
        mask_features = self.mask_pooler(features, rois)
        probs = None
        for head in self.mask_head:
            p = head.select_class(head(mask_features), labels).float().sigmoid()
            probs = p if probs is None else probs + p
        probs = probs / len(self.mask_head)
        for det, probs_i in zip(detections, probs.split([d["boxes"].shape[0] for d in detections])):
            det["mask_probs"] = probs_i
