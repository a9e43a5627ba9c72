"""Mask R-CNN mask head (mmdetection's FCNMaskHead names: `convs.{i}.{conv,bn}`, `upsample`, `conv_logits`), its
training targets and the pasting of predicted masks into the image."""

import torch
import torch.nn.functional as F
from torch import nn

import resnest_cuda

from ..data.polygons import PolygonMasks
from .layers import ConvBlock, NormFactory


class FCNMaskHead(nn.Module):
    """`num_convs` x (3x3 conv, norm, ReLU) → ConvTranspose2d(2x2, stride 2) + ReLU → 1x1 conv to one logit map per
    class. forward(x [K, C, S, S]) -> mask logits [K, num_classes, 2S, 2S]."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_convs: int = 4,
        conv_channels: int = 256,
        norm: NormFactory | None = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.convs = nn.ModuleList(
            ConvBlock(in_channels if i == 0 else conv_channels, conv_channels, 3, norm=norm) for i in range(num_convs)
        )
        last = conv_channels if num_convs > 0 else in_channels
        self.upsample = nn.ConvTranspose2d(last, conv_channels, kernel_size=2, stride=2)
        self.conv_logits = nn.Conv2d(conv_channels, num_classes, 1)
        for layer in (self.upsample, self.conv_logits):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """rows: optional bool [K], the RoIs whose statistics the norm layers use in training (not padding)."""
        for conv in self.convs:
            x = conv(x, rows)
        return self.conv_logits(torch.relu(self.upsample(x)))

    def select_class(self, mask_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[K, num_classes, M, M], labels int64 [K] in [0, num_classes) -> [K, M, M]."""
        rows = torch.arange(labels.shape[0], device=labels.device)
        return mask_logits[rows, labels]


def mask_targets(
    gt_masks: torch.Tensor | PolygonMasks,
    boxes: torch.Tensor,
    matched_idxs: torch.Tensor,
    mask_size: int,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop each matched GT mask to its box and resize to mask_size x mask_size with RoIAlign, then binarise at 0.5;
    polygon masks are cropped and rasterised at mask_size instead (mmdetection's poly2mask=False).

    gt_masks: uint8/bool [G, H, W] or float [G, 1, H, W] (0/1), or PolygonMasks, in input-image pixels; boxes:
    [P, 4] xyxy; matched_idxs: int64 [P] into gt_masks; valid: optional bool [P], rows whose target is needed
    (the others may hold any index and come back as zeros for polygons, unspecified 0/1 for bitmaps). Returns float
    [P, mask_size, mask_size] of 0/1 (boxes' dtype and device). Bitmap targets need no host synchronisation;
    polygons are rasterised on the host (one copy of the boxes there)."""
    num = boxes.shape[0]
    if num == 0 or len(gt_masks) == 0:
        return boxes.new_zeros((num, mask_size, mask_size))
    if isinstance(gt_masks, PolygonMasks):
        if valid is None:
            return gt_masks.crop_and_rasterize(boxes, matched_idxs, mask_size).to(boxes.device, boxes.dtype)
        rows = torch.nonzero(valid.cpu()).squeeze(1)
        out = torch.zeros((num, mask_size, mask_size), dtype=torch.float32)
        out[rows] = gt_masks.crop_and_rasterize(boxes.cpu()[rows], matched_idxs.cpu()[rows], mask_size)
        return out.to(boxes.device, boxes.dtype)
    masks = gt_masks if gt_masks.dim() == 4 else gt_masks[:, None]
    rois = torch.cat([matched_idxs[:, None].to(boxes.dtype), boxes], dim=1)
    crops = resnest_cuda.roi_align(masks.to(boxes.dtype), rois, mask_size, 1.0, 0, True)
    return (crops[:, 0] >= 0.5).to(boxes.dtype)


def paste_masks(
    mask_probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], threshold: float = 0.5
) -> torch.Tensor:
    """Paste [N, M, M] mask probabilities into an image of size (h, w) at boxes [N, 4] (xyxy, that image's pixels),
    bilinearly resampled at pixel centres, and binarise with `>= threshold`. Returns bool [N, h, w]."""
    h, w = image_size
    n = mask_probs.shape[0]
    out = torch.zeros((n, h, w), dtype=torch.bool, device=mask_probs.device)
    chunk = max(1, (1 << 24) // max(h * w, 1))  # bounds the float grid to ~200 MB per chunk
    ys = torch.arange(h, device=mask_probs.device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=mask_probs.device, dtype=torch.float32) + 0.5
    for start in range(0, n, chunk):
        probs = mask_probs[start : start + chunk].float()
        x0, y0, x1, y1 = boxes[start : start + chunk].float().unbind(1)
        # Pixel centre -> [-1, 1] within the box (grid_sample's align_corners=False convention); outside -> 0.
        grid_y = (ys[None] - y0[:, None]) / (y1 - y0).clamp(min=1e-6)[:, None] * 2 - 1  # [n, h]
        grid_x = (xs[None] - x0[:, None]) / (x1 - x0).clamp(min=1e-6)[:, None] * 2 - 1  # [n, w]
        k = probs.shape[0]
        grid = torch.stack([grid_x[:, None, :].expand(k, h, w), grid_y[:, :, None].expand(k, h, w)], dim=3)
        pasted = F.grid_sample(probs[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[start : start + chunk] = pasted[:, 0] >= threshold
    return out
