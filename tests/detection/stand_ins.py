"""Shared helpers of the detection tests: the tiny detectors of the `tiny_test` configs and random images with
ground truth."""

import torch


def tiny_model(kind: str = "mask_rcnn", seed: int = 0):
    """The `tiny_test` detector of `kind` (on resnest14), with its model config; cascade kinds use
    `tiny_cascade_test`."""
    from dataclasses import replace

    from detection.build import build_model
    from detection.configs import get_config

    cfg = get_config("tiny_test").model
    if kind.startswith("cascade"):
        cfg = get_config("tiny_cascade_test").model
    if kind in ("faster_rcnn", "cascade_rcnn"):
        cfg = replace(cfg, kind=kind, roi_head=replace(cfg.roi_head, mask_head=None))
    torch.manual_seed(seed)
    return build_model(cfg), cfg


def random_batch(num_boxes=(3, 0), sizes=((128, 160), (96, 128)), num_classes: int = 3, seed: int = 0):
    """Random 0-255 images and targets: boxes inside each image, masks fill each box."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for n, (h, w) in zip(num_boxes, sizes):
        images.append(torch.rand(3, h, w, generator=g) * 255)
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 16 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35])
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w - 1.0, h - 1.0]))], dim=1)
        masks = torch.zeros(n, h, w, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        labels = torch.randint(0, num_classes, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return images, targets
