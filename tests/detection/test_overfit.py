"""Overfitting two images with the tiny Mask R-CNN drives every loss down.

The R-CNN heads are trained on a fixed set of proposals (GT boxes jittered, plus random boxes) rather than on the
RPN's changing output: with RPN proposals the R-CNN losses are measured on a different RoI population every step
(more positives as the RPN learns), so they need not fall even when the heads learn."""

import torch

from .stand_ins import random_batch, tiny_model

STEPS = 30
SIZES = ((96, 128), (96, 96))


def _fixed_proposals(targets, seed=5):
    g = torch.Generator().manual_seed(seed)
    proposals = []
    for target, (h, w) in zip(targets, SIZES):
        near_gt = target["boxes"].repeat(4, 1)
        near_gt = near_gt + (torch.rand(near_gt.shape, generator=g) - 0.5) * 12
        xy = torch.rand(20, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        random_boxes = torch.cat([xy, xy + 10 + torch.rand(20, 2, generator=g) * 30], dim=1)
        proposals.append(torch.cat([near_gt, random_boxes]))
    return proposals


def _losses(model, images, targets, proposals):
    batch, image_sizes, padded_sizes = model.transform(images)
    features = model.neck(model.backbone(batch))
    _, _, rpn_losses = model.rpn_head(features, image_sizes, padded_sizes, targets)
    _, roi_losses = model.roi_head(features, proposals, image_sizes, targets)
    return {**rpn_losses, **roi_losses}


def _measure(model, images, targets, proposals):
    """Losses without a training step, with the samplers' draws fixed, so before and after see the same samples."""
    torch.manual_seed(1234)
    with torch.no_grad():
        return {k: v.item() for k, v in _losses(model, images, targets, proposals).items()}


def test_losses_decrease_when_overfitting_two_images():
    model, _ = tiny_model("mask_rcnn", seed=0)
    model.train()
    images, targets = random_batch((2, 3), sizes=SIZES, seed=1)
    proposals = _fixed_proposals(targets)
    before = _measure(model, images, targets, proposals)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=2e-3)
    for step in range(STEPS):
        torch.manual_seed(step)  # the samplers draw from the global generator
        losses = _losses(model, images, targets, proposals)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    after = _measure(model, images, targets, proposals)
    assert set(before) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"}
    for name in before:
        assert after[name] < 0.8 * before[name], (name, before[name], after[name])
