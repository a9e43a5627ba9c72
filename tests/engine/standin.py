"""A tiny detector with the detection model interface, used to test the engine independently of the R-CNN code.

It regresses one box (the first ground-truth box) and its class from globally pooled conv features; the loss is a
mean over images, so a batch split across DDP ranks gives the same gradient as the whole batch in one process.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StandInConfig:
    num_classes: int = 4
    width: int = 8
    with_masks: bool = True
    nan_at_step: int = 0  # > 0: the loss of this training forward (1-based) is NaN


class StandInDetector(nn.Module):
    def __init__(self, num_classes: int, width: int, with_masks: bool, nan_at_step: int = 0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.box = nn.Linear(width, 4)
        self.cls = nn.Linear(width, num_classes)
        self.with_masks = with_masks
        self.nan_at_step = nan_at_step
        self.steps = 0

    def forward(self, images, targets=None, original_sizes=None):
        feats = torch.cat([self.features((image / 255.0 - 0.5)[None]) for image in images])  # [B, width]
        rel_boxes = torch.sigmoid(self.box(feats))  # [B, 4] x1, y1, x2, y2 as fractions of the image size
        logits = self.cls(feats)  # [B, num_classes]
        if self.training:
            return self._losses(images, targets, rel_boxes, logits)
        outputs = []
        for i, image in enumerate(images):
            h, w = original_sizes[i] if original_sizes is not None else image.shape[-2:]
            x1, y1, x2, y2 = (rel_boxes[i] * torch.tensor([w, h, w, h], dtype=torch.float32)).tolist()
            box = torch.tensor([[min(x1, x2), min(y1, y2), max(x1, x2) + 1, max(y1, y2) + 1]])
            score, label = logits[i].softmax(0).max(0)
            output = {"boxes": box, "scores": score[None], "labels": label[None]}
            if self.with_masks:
                mask = torch.zeros((1, h, w), dtype=torch.uint8)
                bx = box[0].round().long().tolist()
                mask[0, bx[1]:bx[3], bx[0]:bx[2]] = 1
                output["masks"] = mask
            outputs.append(output)
        return outputs

    def _losses(self, images, targets, rel_boxes, logits):
        self.steps += 1
        box_losses, cls_losses = [], []
        for i, (image, target) in enumerate(zip(images, targets)):
            h, w = image.shape[-2:]
            if len(target["boxes"]) == 0:
                box_losses.append(rel_boxes[i].sum() * 0)
                cls_losses.append(logits[i].sum() * 0)
                continue
            gt = target["boxes"][0] / torch.tensor([w, h, w, h], dtype=torch.float32, device=image.device)
            box_losses.append(F.l1_loss(rel_boxes[i], gt, reduction="sum"))
            cls_losses.append(F.cross_entropy(logits[i][None], target["labels"][:1]))
        loss_box = torch.stack(box_losses).mean()
        if self.nan_at_step and self.steps == self.nan_at_step:
            loss_box = loss_box * float("nan")
        return {"loss_box": loss_box, "loss_cls": torch.stack(cls_losses).mean()}


def build_standin(cfg: StandInConfig) -> StandInDetector:
    return StandInDetector(cfg.num_classes, cfg.width, cfg.with_masks, cfg.nan_at_step)
