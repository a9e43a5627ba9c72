"""Region proposal network: a shared 3x3 conv head over the pyramid, anchor targets and losses, and proposal
generation (top-k per level, NMS per level, top max_per_img per image). Parameter names follow mmdetection's
RPNHead (`rpn_conv`, `rpn_cls`, `rpn_reg`)."""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import resnest_cuda

from .anchors import AnchorGenerator, in_grid_mask, inside_image_mask
from .box_ops import BoxCoder, box_iou, clip_boxes, nonempty_box_mask
from .losses import box_regression_loss, sigmoid_ce_loss
from .matcher import Matcher
from .sampler import RandomSampler


class ProposalSettings(NamedTuple):
    nms_pre: int  # candidates kept per level before NMS (<= 0: all)
    nms_iou: float
    max_per_img: int
    min_box_size: float = 0.0


class RPNHead(nn.Module):
    """RPN with sigmoid objectness (one logit per anchor) and class-agnostic box deltas.

    forward(features, image_sizes, padded_sizes, targets, static_shapes) -> (proposals, proposal_valid, losses):
    `proposals` is a list of [P_i, 4] fp32 xyxy boxes (detached) in input-image pixels; `losses` holds
    loss_rpn_cls and loss_rpn_bbox in training. With `static_shapes` (training only) every image gets exactly
    `max_per_img` proposals, padded, and `proposal_valid` is a list of bool [max_per_img] marking the real ones: no
    host synchronisation. Otherwise the padding is dropped (one host sync per image) and `proposal_valid` is None.
    """

    def __init__(
        self,
        in_channels: int,
        feat_channels: int,
        anchor_generator: AnchorGenerator,
        coder: BoxCoder,
        matcher: Matcher,
        sampler: RandomSampler,
        train_settings: ProposalSettings,
        test_settings: ProposalSettings,
        allowed_border: float = -1.0,
        box_loss: str = "l1",
        box_loss_beta: float = 1.0,
        cls_loss_weight: float = 1.0,
        box_loss_weight: float = 1.0,
    ):
        super().__init__()
        num_anchors = anchor_generator.num_anchors
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_anchors * 4, 1)
        for conv in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        self.anchor_generator = anchor_generator
        self.coder = coder
        self.matcher = matcher
        self.sampler = sampler
        self.train_settings = train_settings
        self.test_settings = test_settings
        self.allowed_border = allowed_border
        self.box_loss = box_loss
        self.box_loss_beta = box_loss_beta
        self.cls_loss_weight = cls_loss_weight
        self.box_loss_weight = box_loss_weight

    def forward(
        self,
        features: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        padded_sizes: list[tuple[int, int]] | None = None,
        targets: list[dict[str, torch.Tensor]] | None = None,
        static_shapes: bool = False,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, dict[str, torch.Tensor]]:
        logits_per_level, deltas_per_level = self._forward_head(features)
        anchors_per_level, cells_per_level = self.anchor_generator.anchors_and_cells(
            [tuple(f.shape[-2:]) for f in features], with_cells=self.training
        )
        settings = self.train_settings if self.training else self.test_settings
        with torch.no_grad():
            proposals, proposal_valid = self._generate_proposals(
                anchors_per_level, [x.detach() for x in logits_per_level], [x.detach() for x in deltas_per_level],
                image_sizes, settings, compact=not (static_shapes and self.training),
            )
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("targets: required in training mode")
            anchors = torch.cat(anchors_per_level)
            valid = self._valid_anchors(anchors, torch.cat(cells_per_level), image_sizes, padded_sizes or image_sizes)
            losses = self._losses(
                anchors, valid, torch.cat(logits_per_level, 1), torch.cat(deltas_per_level, 1), targets
            )
        return proposals, proposal_valid, losses

    def _forward_head(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: objectness logits [N, H*W*A] and deltas [N, H*W*A, 4], in (H, W, A) order like the anchors.

        rpn_cls and rpn_reg (their own parameters, mmdetection's names) run as one 1x1 conv with their weights
        stacked: the shared feature map is read once, and its gradient is written once instead of twice and
        summed."""
        logits, deltas = [], []
        a = self.rpn_cls.out_channels
        weight = torch.cat([self.rpn_cls.weight, self.rpn_reg.weight])
        bias = torch.cat([self.rpn_cls.bias, self.rpn_reg.bias])
        for x in features:
            t = torch.relu(self.rpn_conv(x))
            n = x.shape[0]
            out = F.conv2d(t, weight, bias)  # (N, A + A*4, H, W)
            logits.append(out[:, :a].permute(0, 2, 3, 1).reshape(n, -1))  # (N, A, H, W) -> (N, H*W*A)
            deltas.append(out[:, a:].permute(0, 2, 3, 1).reshape(n, -1, 4))  # (N, A*4, H, W) -> (N, H*W*A, 4)
        return logits, deltas

    def _generate_proposals(
        self,
        anchors_per_level: list[torch.Tensor],
        logits_per_level: list[torch.Tensor],
        deltas_per_level: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        settings: ProposalSettings,
        compact: bool = True,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Proposals per image; compacted ([P_i, 4], validity None) or padded to max_per_img with validity."""
        scores, boxes, levels = [], [], []
        for level, (anchors, logits, deltas) in enumerate(zip(anchors_per_level, logits_per_level, deltas_per_level)):
            k = logits.shape[1] if settings.nms_pre <= 0 else min(settings.nms_pre, logits.shape[1])
            top_scores, top_idx = logits.float().sigmoid().topk(k, dim=1)  # [N, k], whole batch at once
            top_deltas = deltas.gather(1, top_idx[..., None].expand(-1, -1, 4))
            boxes.append(self.coder.decode(anchors[top_idx], top_deltas))  # [N, k, 4]
            scores.append(top_scores)
            levels.append(torch.full((k,), level, dtype=torch.int64, device=logits.device))
        scores, boxes, levels = torch.cat(scores, 1), torch.cat(boxes, 1), torch.cat(levels)
        proposals, proposal_valid = [], []
        for i, size in enumerate(image_sizes):
            boxes_i = clip_boxes(boxes[i], size)
            nonempty = nonempty_box_mask(boxes_i, settings.min_box_size)
            # Empty boxes are not removed before NMS but scored -inf: sorted after every other box, they suppress
            # none of them, and they are dropped with the NMS padding afterwards. The kept boxes are those of
            # "filter, then NMS, then the top max_per_img"; padded, they need no host synchronisation, compacted one
            # per image (instead of three boolean indexings and the NMS output length).
            scores_i = torch.where(nonempty, scores[i], float("-inf"))
            keep, valid = resnest_cuda.batched_nms_fixed(boxes_i, scores_i, levels, settings.nms_iou,
                                                         max(settings.max_per_img, 0))
            valid = valid & nonempty[keep]
            proposals.append(boxes_i[keep[valid]] if compact else boxes_i[keep])
            proposal_valid.append(valid)
        return proposals, (None if compact else proposal_valid)

    def _valid_anchors(
        self,
        anchors: torch.Tensor,
        cells: torch.Tensor,
        image_sizes: list[tuple[int, int]],
        padded_sizes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """bool [N, K]: anchors that may be assigned (not in batch padding; inside the image ± allowed_border).
        anchors [K, 4] and their cell origins [K, 2], every level."""
        valid = []
        for image_size, padded_size in zip(image_sizes, padded_sizes):
            in_grid = in_grid_mask(cells, padded_size)
            if self.allowed_border >= 0:
                in_grid = in_grid & inside_image_mask(anchors, image_size, self.allowed_border)
            valid.append(in_grid)
        return torch.stack(valid)

    def _losses(
        self,
        anchors: torch.Tensor,
        valid: torch.Tensor,
        logits: torch.Tensor,
        deltas: torch.Tensor,
        targets: list[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """anchors [K, 4]; valid bool [N, K]; logits [N, K]; deltas [N, K, 4]."""
        labels, weights, box_targets, pos_masks = [], [], [], []
        for i, target in enumerate(targets):
            gt_boxes = target["boxes"].to(anchors)
            matched_idxs, match_labels = self.matcher(box_iou(gt_boxes, anchors), valid[i])
            pos, neg = self.sampler(match_labels)
            matched_gt = gt_boxes[matched_idxs] if gt_boxes.shape[0] > 0 else anchors
            # Non-positive rows may hold log(0) for degenerate boxes; they carry zero weight, so zero them.
            encoded = torch.where(pos[:, None], self.coder.encode(anchors, matched_gt), 0.0)
            labels.append(pos.float())
            weights.append((pos | neg).float())
            box_targets.append(encoded)
            pos_masks.append(pos)
        labels, weights = torch.stack(labels), torch.stack(weights)
        num_samples = weights.sum()
        box_weights = torch.stack(pos_masks)[..., None].float().expand_as(deltas)
        loss_cls = sigmoid_ce_loss(logits, labels, weights, num_samples)
        loss_box = box_regression_loss(
            self.box_loss, deltas, torch.stack(box_targets), box_weights, num_samples, self.box_loss_beta
        )
        return {
            "loss_rpn_cls": loss_cls * self.cls_loss_weight,
            "loss_rpn_bbox": loss_box * self.box_loss_weight,
        }
