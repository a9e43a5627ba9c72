"""Pure-PyTorch stand-ins used by the detection tests for ops that `resnest_cuda` may not provide in this build:
greedy NMS, batched NMS and RoIAlign (aligned, adaptive sampling) written from SPEC §6, and a tiny conv backbone
with the ResNeSt detection interface (`out_channels`, `strides`, forward -> 4 maps at strides 4..32)."""

import torch
from torch import nn


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = scores.argsort(descending=True, stable=True)
    boxes = boxes[order]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool)
    keep = []
    for i in range(boxes.shape[0]):
        if suppressed[i]:
            continue
        keep.append(i)
        lt = torch.max(boxes[i, :2], boxes[i + 1 :, :2])
        rb = torch.min(boxes[i, 2:], boxes[i + 1 :, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=1)
        iou = inter / (area[i] + area[i + 1 :] - inter).clamp(min=1e-12)
        suppressed[i + 1 :] |= iou > iou_threshold
    return order[torch.tensor(keep, dtype=torch.int64)].to(boxes.device)


def batched_nms(boxes, scores, idxs, iou_threshold):
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    offset = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offset[:, None], scores, iou_threshold)


def _bilinear_axis(coords: torch.Tensor, size: int):
    """Per-axis bilinear indices and weights; out-of-range samples (< -1 or > size) get weight 0."""
    valid = (coords >= -1.0) & (coords <= size)
    c = coords.clamp(min=0)
    low = c.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, size - 1, low + 1)
    c = torch.where(at_edge, low.to(c), c)
    frac = c - low
    return low, high, (1 - frac) * valid, frac * valid


def roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=0, aligned=True):
    """RoIs with the same sampling grid are processed together (the adaptive grid depends on each RoI's size)."""
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    _, channels, height, width = input.shape
    out = input.new_zeros((rois.shape[0], channels, out_h, out_w))
    if rois.shape[0] == 0:
        return out
    boxes = rois[:, 1:] * spatial_scale - (0.5 if aligned else 0.0)
    roi_w, roi_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.int64)
        grid_w = torch.full_like(roi_w, sampling_ratio, dtype=torch.int64)
    else:
        grid_h = torch.ceil(roi_h.detach() / out_h).clamp(min=1).long()
        grid_w = torch.ceil(roi_w.detach() / out_w).clamp(min=1).long()
    for gh, gw in {(int(a), int(b)) for a, b in zip(grid_h, grid_w)}:
        idx = torch.nonzero((grid_h == gh) & (grid_w == gw)).squeeze(1)
        steps_y = (torch.arange(out_h * gh, dtype=input.dtype) + 0.5) / (out_h * gh)
        steps_x = (torch.arange(out_w * gw, dtype=input.dtype) + 0.5) / (out_w * gw)
        ys = boxes[idx, 1, None] + steps_y[None] * roi_h[idx, None]  # [R, Ny]
        xs = boxes[idx, 0, None] + steps_x[None] * roi_w[idx, None]  # [R, Nx]
        yl, yh, wyl, wyh = _bilinear_axis(ys, height)
        xl, xh, wxl, wxh = _bilinear_axis(xs, width)
        b = rois[idx, 0].long()[:, None, None]
        feat = input.permute(0, 2, 3, 1)  # [N, H, W, C]
        val = 0
        for y, wy in ((yl, wyl), (yh, wyh)):
            for x, wx in ((xl, wxl), (xh, wxh)):
                val = val + feat[b, y[:, :, None], x[:, None, :]] * (wy[:, :, None] * wx[:, None, :])[..., None]
        val = val.view(idx.numel(), out_h, gh, out_w, gw, channels).mean(dim=(2, 4))  # [R, out_h, out_w, C]
        out[idx] = val.permute(0, 3, 1, 2).to(out.dtype)
    return out


class TinyBackbone(nn.Module):
    """Four strided conv stages (strides 4, 8, 16, 32) with BatchNorm, standing in for a ResNeSt."""

    def __init__(self, channels=(8, 16, 32, 64)):
        super().__init__()
        self.out_channels = list(channels)
        self.strides = [4, 8, 16, 32]
        layers, in_ch = [], 3
        for i, ch in enumerate(channels):
            stride = 4 if i == 0 else 2
            layers.append(
                nn.Sequential(nn.Conv2d(in_ch, ch, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(ch),
                              nn.ReLU())
            )
            in_ch = ch
        self.stages = nn.ModuleList(layers)

    def forward(self, x):
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


def tiny_model(kind: str = "mask_rcnn", seed: int = 0):
    """The `tiny_test` detector of `kind` ("faster_rcnn" or "mask_rcnn"), on resnest14 when `resnest_cuda` provides
    it and on `TinyBackbone` otherwise."""
    from dataclasses import replace

    import resnest_cuda
    from detection.build import build_model
    from detection.configs import get_config

    cfg = get_config("tiny_test").model
    if kind.startswith("cascade"):
        cfg = get_config("tiny_cascade_test").model
    if kind in ("faster_rcnn", "cascade_rcnn"):
        cfg = replace(cfg, kind=kind, roi_head=replace(cfg.roi_head, mask_head=None))
    torch.manual_seed(seed)
    backbone = None
    if not hasattr(resnest_cuda, cfg.backbone.name):
        backbone = TinyBackbone()
        cfg = replace(cfg, fpn=replace(cfg.fpn, in_channels=tuple(backbone.out_channels)))
    return build_model(cfg, backbone=backbone), cfg


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
