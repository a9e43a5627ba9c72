"""R-CNN heads on proposals: training targets (match + sample with GT added as proposals), box and mask losses,
and inference post-processing. The per-stage steps are functions so that a cascade can run them once per stage."""

from typing import NamedTuple

import torch
from torch import nn

import resnest_cuda

from ..data.polygons import PolygonMasks
from .box_head import ConvFCBoxHead
from .box_ops import BoxCoder, box_iou
from .losses import box_regression_loss, mask_bce_loss, softmax_ce_loss
from .mask_head import FCNMaskHead, mask_targets
from .matcher import IGNORE, POSITIVE, Matcher
from .poolers import MultiScaleRoIAlign, boxes_to_rois
from .sampler import RandomSampler, random_subset_mask


class SampledRoIs(NamedTuple):
    """Training RoIs of a batch: per image, its sampled positives, then its sampled negatives, then (fixed-size
    sampling) padding slots up to the sampler's `num`. R = slots over the batch."""

    rois: torch.Tensor  # [R, 5] (batch_idx, x1, y1, x2, y2)
    labels: torch.Tensor  # int64 [R], num_classes for background and padding
    box_targets: torch.Tensor  # fp32 [R, 4] encoded deltas (zero for negatives and padding)
    pos: torch.Tensor  # bool [R]
    matched_idxs: torch.Tensor  # int64 [R], GT index within the RoI's image (0 for negatives and padding)
    is_gt: torch.Tensor  # bool [R], the RoI is a GT box added as a proposal (a cascade drops these when refining)
    valid: torch.Tensor  # bool [R], a sampled RoI (False: padding, which carries zero weight in every loss)
    slots_per_image: int | None  # the sampler's `num` when every image has that many slots, else None (compacted)


def sampling_keys(boxes: torch.Tensor) -> torch.Tensor | None:
    """The random keys of the R-CNN sampler's two draws for these candidate boxes ([N, 4] -> float [2, N] in
    [0, 1)), or None for the sampler's own `torch.rand` draws. Tests substitute keys that depend on each box alone,
    so that two layouts of the same boxes (padded or compacted) sample the same RoIs."""
    return None


def mask_keep_keys(rois: torch.Tensor) -> torch.Tensor | None:
    """The random keys that choose which positives keep a mask-head row when a batch has more positives than
    mask rows (rois [R, 5] -> float [R] in [0, 1)), or None for `torch.rand` draws. Tests substitute keys that
    depend on each RoI alone, so that padded and compacted samples keep the same positives."""
    return None


def label_and_sample_proposals(
    proposals: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    matcher: Matcher,
    sampler: RandomSampler,
    coder: BoxCoder,
    num_classes: int,
    proposal_valid: list[torch.Tensor] | None = None,
    compact: bool = True,
) -> SampledRoIs:
    """Match proposals to GT, add the GT boxes as positives of themselves (when sampler.add_gt_as_proposals),
    sample, and encode.

    As in mmdetection, the matcher sees the proposals alone: were the GT boxes in the IoU matrix, every GT's best
    IoU would be 1.0 (itself) and `match_low_quality` could never give a proposal to a GT. The GT boxes are
    prepended afterwards, each matched to itself (even when degenerate or tied with another GT).

    proposal_valid: optional bool [P_i] per image; invalid proposals (padding) are never sampled. Every image gets
    exactly `sampler.num` slots (`RandomSampler.sample_slots`), with no host synchronisation; `compact` then drops
    the padding slots (one host sync for the batch)."""
    parts = []
    for i, (boxes, target) in enumerate(zip(proposals, targets)):
        gt_boxes = target["boxes"].to(boxes)
        gt_labels = target["labels"]
        num_gt = gt_boxes.shape[0]
        valid_i = None if proposal_valid is None else proposal_valid[i]
        matched_idxs, match_labels = matcher(box_iou(gt_boxes, boxes), valid_i)
        if sampler.add_gt_as_proposals:
            boxes = torch.cat([gt_boxes, boxes])
            matched_idxs = torch.cat([torch.arange(num_gt, device=boxes.device), matched_idxs])
            match_labels = torch.cat([match_labels.new_full((num_gt,), POSITIVE), match_labels])
        if boxes.shape[0] == 0:  # no candidate at all: one ignored dummy box keeps the slots' shapes
            boxes = boxes.new_zeros((1, 4))
            matched_idxs = matched_idxs.new_zeros((1,))
            match_labels = match_labels.new_full((1,), IGNORE)
        idx, is_pos, valid = sampler.sample_slots(match_labels, keys=sampling_keys(boxes))
        sampled, matched = boxes[idx], matched_idxs[idx]
        is_gt = (idx < num_gt) & valid if sampler.add_gt_as_proposals else torch.zeros_like(is_pos)
        if num_gt > 0:
            labels = torch.where(is_pos, gt_labels[matched], num_classes)
            encoded = torch.where(is_pos[:, None], coder.encode(sampled, gt_boxes[matched]), 0.0)
        else:
            labels = torch.full_like(matched, num_classes)
            encoded = sampled.new_zeros(sampled.shape)
        batch_idx = sampled.new_full((sampled.shape[0], 1), float(i))
        parts.append((torch.cat([batch_idx, sampled], 1), labels, encoded, is_pos, matched, is_gt, valid))
    samples = SampledRoIs(*(torch.cat(p) for p in zip(*parts)), slots_per_image=sampler.num)
    if not compact:
        return samples
    keep = torch.nonzero(samples.valid).squeeze(1)
    return SampledRoIs(*(t[keep] for t in samples[:-1]), slots_per_image=None)


def padding_excluded(samples: SampledRoIs) -> torch.Tensor | None:
    """The rows a head's batch statistics may use: the sampled RoIs of fixed-size samples, None (all) when
    compacted."""
    return samples.valid if samples.slots_per_image is not None else None


def box_head_losses(
    head: ConvFCBoxHead,
    cls_logits: torch.Tensor,
    box_deltas: torch.Tensor,
    samples: SampledRoIs,
    box_loss: str = "l1",
    box_loss_beta: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax CE over the sampled RoIs and box regression of positives, both divided by the number of sampled
    RoIs (a device tensor: padding slots carry zero weight and are not counted)."""
    weights = samples.valid.to(cls_logits.dtype)
    num_rois = weights.sum()
    loss_cls = softmax_ce_loss(cls_logits, samples.labels, num_rois, weights)
    deltas = head.select_deltas(box_deltas, samples.labels)
    box_weights = samples.pos[:, None].to(deltas.dtype).expand_as(deltas)
    loss_box = box_regression_loss(box_loss, deltas, samples.box_targets, box_weights, num_rois, box_loss_beta)
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


def gt_mask_inputs(targets: list[dict[str, torch.Tensor]], dtype: torch.dtype) -> list:
    """Each image's GT masks as the mask targets read them, converted once per training step (a cascade reads them
    once per stage): bitmap masks as `dtype` [G, 1, H, W] (0/1 is exact in any float dtype), polygon masks as
    they are."""
    out = []
    for i, target in enumerate(targets):
        if "masks" not in target:
            raise ValueError(f"targets[{i}]: a mask model needs 'masks' (uint8 [N, H, W] or PolygonMasks)")
        masks = target["masks"]
        out.append(masks if isinstance(masks, PolygonMasks) else masks[:, None].to(dtype))
    return out


class MaskRoIs(NamedTuple):
    """The rows the mask head runs on: indices into the samples, which of them are kept positives (the others
    carry zero weight), and how many positives got no row."""

    slots: torch.Tensor  # int64 [K] into the samples' rows
    weights: torch.Tensor  # bool [K], a kept positive
    counts: list[int] | None  # rows per image when the rows are grouped by image in that order, else None
    dropped: torch.Tensor | None  # int64 [], positives left without a row (None: no cap, none ever is)


def _check_mask_slots(mask_slots_per_image: int | None) -> None:
    if mask_slots_per_image is not None and (
        not isinstance(mask_slots_per_image, int) or isinstance(mask_slots_per_image, bool) or mask_slots_per_image < 1
    ):
        raise ValueError(f"mask_slots_per_image: expected a positive integer or None, got {mask_slots_per_image!r}")


def select_mask_rois(
    samples: SampledRoIs, num_images: int, pos_limit: int, mask_slots_per_image: int | None = None
) -> MaskRoIs:
    """Choose the mask head's rows among the samples' positives.

    mask_slots_per_image None: every positive. Fixed-size samples then give the head the first `pos_limit`
    slots of each image, which hold all its positives (num_images * pos_limit rows, padding weighted 0, no host
    sync); compacted samples give it their positives (one host sync, and one for their count per image).

    mask_slots_per_image set: the batch's positives share num_images * min(mask_slots_per_image, pos_limit) rows.
    When there are more positives than rows, a uniformly random subset of them is kept (`mask_keep_keys`), so the
    mean loss over the kept positives is an unbiased estimate of the mean over all of them; `dropped` counts the
    others. Fixed-size samples move the kept positives to the front of one batch-level buffer with a stable sort
    (still in slot order, so image by image) and cut it at that size: fixed shapes, no host sync. Compacted
    samples select the kept positives."""
    fixed = samples.slots_per_image is not None
    if mask_slots_per_image is None:
        if fixed:
            per_image = min(pos_limit, samples.slots_per_image)
            starts = torch.arange(num_images, device=samples.pos.device) * samples.slots_per_image
            slots = (starts[:, None] + torch.arange(per_image, device=starts.device)).flatten()
            return MaskRoIs(slots, samples.pos[slots], [per_image] * num_images, None)
        slots = torch.nonzero(samples.pos).squeeze(1)
        counts = torch.bincount(samples.rois[slots, 0].long(), minlength=num_images).tolist()
        return MaskRoIs(slots, samples.pos[slots], counts, None)
    _check_mask_slots(mask_slots_per_image)
    capacity = num_images * min(mask_slots_per_image, pos_limit)
    kept = random_subset_mask(samples.pos, capacity, keys=mask_keep_keys(samples.rois))
    dropped = samples.pos.sum() - kept.sum()
    if fixed:
        capacity = min(capacity, kept.shape[0])
        slots = torch.argsort((~kept).to(torch.uint8), stable=True)[:capacity]
        return MaskRoIs(slots, kept[slots], None, dropped)
    slots = torch.nonzero(kept).squeeze(1)
    counts = torch.bincount(samples.rois[slots, 0].long(), minlength=num_images).tolist()
    return MaskRoIs(slots, kept[slots], counts, dropped)


def batch_mask_targets(
    gt_masks: list, rois: torch.Tensor, matched: torch.Tensor, weights: torch.Tensor, mask_size: int
) -> torch.Tensor:
    """`mask_targets` of rows from any image (rois [K, 5] with their batch index, matched int64 [K] into their
    image's GT, weights bool [K]) -> float [K, mask_size, mask_size], zero where weights is False. One crop per
    image over all K rows, the rows of other images (and unweighted rows) given an empty box, which costs
    nothing to crop; no host synchronisation for bitmap masks."""
    image = rois[:, 0].long()
    out = rois.new_zeros((rois.shape[0], mask_size, mask_size))
    for i, masks in enumerate(gt_masks):
        mine = weights & (image == i)
        boxes = torch.where(mine[:, None], rois[:, 1:], 0.0)
        crops = mask_targets(masks, boxes, torch.where(mine, matched, 0), mask_size, mine)
        out = torch.where(mine[:, None, None], crops, out)
    return out


def mask_head_loss(
    pooler: MultiScaleRoIAlign,
    head: FCNMaskHead,
    features: list[torch.Tensor],
    samples: SampledRoIs,
    gt_masks: list,
    pos_limit: int,
    mask_slots_per_image: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-class BCE of the mask head on the positive sampled RoIs, against their GT masks (`gt_mask_inputs`)
    cropped to the RoI, averaged over the positives' pixels, and the number of positives left out of it
    (`select_mask_rois`: None without a cap). With fixed-size samples there is no host synchronisation (bitmap
    masks); the rows that hold no kept positive carry zero weight and are left out of the head's batch
    statistics."""
    num_images = len(gt_masks)
    chosen = select_mask_rois(samples, num_images, pos_limit, mask_slots_per_image)
    slots, weights = chosen.slots, chosen.weights
    rois, labels, matched = samples.rois[slots], samples.labels[slots], samples.matched_idxs[slots]
    classes = torch.where(weights, labels, 0)  # background and padding rows read class 0, with zero weight
    rows = weights if samples.slots_per_image is not None else None  # compacted: every row is a kept positive
    mask_logits = head.select_class(head(pooler(features, rois), rows), classes)
    mask_size = mask_logits.shape[-1]
    if chosen.counts is None:
        gt = batch_mask_targets(gt_masks, rois, matched, weights, mask_size)
    else:
        per_image = zip(gt_masks, *(t.split(chosen.counts) for t in (rois, matched, weights)))
        gt = torch.cat([mask_targets(m, r[:, 1:], i, mask_size, w) for m, r, i, w in per_image])
    return mask_bce_loss(mask_logits, gt, weights), chosen.dropped


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
        mask_slots_per_image: int | None = None,
    ):
        super().__init__()
        if (mask_pooler is None) != (mask_head is None):
            raise ValueError("mask_pooler and mask_head must be given together")
        _check_mask_slots(mask_slots_per_image)
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
        self.mask_slots_per_image = mask_slots_per_image
        # Device tensors of the last training step that are no losses (`mask_dropped`: positives without a
        # mask-head row, with a mask_slots_per_image cap); the training loop logs them with the losses.
        self.train_stats: dict[str, torch.Tensor] = {}

    @property
    def num_classes(self) -> int:
        return self.bbox_head.num_classes

    def forward(
        self,
        features: list[torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
        proposal_valid: list[torch.Tensor] | None = None,
        static_shapes: bool = False,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """proposal_valid (training): optional bool [P_i] per image, False for padding proposals. static_shapes
        (training): keep the fixed-size samples (no host synchronisation) instead of compacting them."""
        if self.training:
            if targets is None:
                raise ValueError("targets: required in training mode")
            return [], self._forward_train(features, proposals, targets, proposal_valid, static_shapes)
        detections = self._forward_box_inference(features, proposals, image_sizes)
        if self.mask_head is not None:
            self._forward_mask_inference(features, detections)
        return detections, {}

    def _forward_box(
        self, features: list[torch.Tensor], rois: torch.Tensor, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.bbox_head(self.box_pooler(features, rois), rows)

    def _forward_train(
        self,
        features: list[torch.Tensor],
        proposals: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        proposal_valid: list[torch.Tensor] | None,
        static_shapes: bool,
    ) -> dict[str, torch.Tensor]:
        samples = label_and_sample_proposals(
            proposals, targets, self.matcher, self.sampler, self.coder, self.num_classes, proposal_valid,
            compact=not static_shapes,
        )
        cls_logits, box_deltas = self._forward_box(features, samples.rois, padding_excluded(samples))
        loss_cls, loss_box = box_head_losses(
            self.bbox_head, cls_logits, box_deltas, samples, self.box_loss, self.box_loss_beta
        )
        losses = {"loss_cls": loss_cls * self.cls_loss_weight, "loss_bbox": loss_box * self.box_loss_weight}
        if self.mask_head is not None:
            gt_masks = gt_mask_inputs(targets, samples.rois.dtype)
            loss_mask, dropped = mask_head_loss(
                self.mask_pooler, self.mask_head, features, samples, gt_masks, self.sampler.pos_limit,
                self.mask_slots_per_image,
            )
            losses["loss_mask"] = loss_mask * self.mask_loss_weight
            self.train_stats = {} if dropped is None else {"mask_dropped": dropped}
        return losses

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
