"""Pure-PyTorch stand-ins used by the detection tests for ops that `resnest_cuda` may not provide in this build:
greedy NMS, batched NMS and RoIAlign (aligned, adaptive sampling) written from SPEC §6, and a tiny conv backbone
with the ResNeSt detection interface (`out_channels`, `strides`, forward -> 4 maps at strides 4..32)."""

import math

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
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    _, channels, height, width = input.shape
    out = []
    offset = 0.5 if aligned else 0.0
    for roi in rois:
        b = int(roi[0])
        x1, y1, x2, y2 = (roi[1:] * spatial_scale - offset).tolist()
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        grid_h = sampling_ratio if sampling_ratio > 0 else max(math.ceil(roi_h / out_h), 1)
        grid_w = sampling_ratio if sampling_ratio > 0 else max(math.ceil(roi_w / out_w), 1)
        ys = y1 + (torch.arange(out_h * grid_h, dtype=input.dtype) + 0.5) * roi_h / (out_h * grid_h)
        xs = x1 + (torch.arange(out_w * grid_w, dtype=input.dtype) + 0.5) * roi_w / (out_w * grid_w)
        yl, yh, wyl, wyh = _bilinear_axis(ys, height)
        xl, xh, wxl, wxh = _bilinear_axis(xs, width)
        f = input[b]
        val = (
            f[:, yl[:, None], xl[None]] * (wyl[:, None] * wxl[None])
            + f[:, yl[:, None], xh[None]] * (wyl[:, None] * wxh[None])
            + f[:, yh[:, None], xl[None]] * (wyh[:, None] * wxl[None])
            + f[:, yh[:, None], xh[None]] * (wyh[:, None] * wxh[None])
        )
        out.append(val.view(channels, out_h, grid_h, out_w, grid_w).mean(dim=(2, 4)))
    if not out:
        return input.new_zeros((0, channels, out_h, out_w))
    return torch.stack(out)


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
