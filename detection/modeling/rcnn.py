"""The two-stage detector: transform → backbone → neck → rpn_head → roi_head, and mapping of detections back to the
original image size. Attribute names (`backbone`, `neck`, `rpn_head`, `roi_head`) follow mmdetection's keys."""

import math

import torch
from torch import nn

from .box_ops import scale_boxes
from .mask_head import paste_masks


class ImageTransform(nn.Module):
    """Normalise 0-255 RGB images with the pixel mean/std and batch them, zero-padded (after normalisation) at the
    bottom/right to a multiple of `size_divisor`, in channels_last memory format when `channels_last`.

    forward(images: list of float or uint8 [3, H_i, W_i]) -> (batch [N, 3, H, W], image_sizes [(H_i, W_i)],
    padded_sizes [(ceil(H_i / d) * d, ceil(W_i / d) * d)]). The batch has the dtype of a floating first image,
    float32 for uint8 images (the training and evaluation loaders deliver uint8 where the resize leaves integer
    pixels: a quarter of the bytes to copy to the device, normalised there)."""

    def __init__(self, pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...], size_divisor: int = 32,
                 channels_last: bool = False):
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.size_divisor = size_divisor
        self.channels_last = channels_last

    def _pad_to(self, size: int) -> int:
        return int(math.ceil(size / self.size_divisor) * self.size_divisor)

    def forward(self, images: list[torch.Tensor]):
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError("images: expected a non-empty list of float or uint8 tensors [3, H, W]")
        for i, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3 or not (image.is_floating_point() or image.dtype == torch.uint8):
                raise ValueError(
                    f"images[{i}]: expected a float or uint8 tensor [3, H, W], got {image.dtype} {tuple(image.shape)}"
                )
        image_sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        padded_sizes = [(self._pad_to(h), self._pad_to(w)) for h, w in image_sizes]
        batch_h = max(h for h, _ in padded_sizes)
        batch_w = max(w for _, w in padded_sizes)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        dtype = images[0].dtype if images[0].is_floating_point() else torch.float32
        batch = images[0].new_empty((len(images), 3, batch_h, batch_w), dtype=dtype).contiguous(
            memory_format=memory_format)
        batch.zero_()
        for i, image in enumerate(images):
            h, w = image_sizes[i]
            batch[i, :, :h, :w] = (image - self.pixel_mean) / self.pixel_std
        return batch, image_sizes, padded_sizes


class GeneralizedRCNN(nn.Module):
    """Faster / Mask R-CNN (and cascades, through their roi_head).

    forward(images, targets=None, original_sizes=None):
      images: list of float [3, H, W], 0-255 RGB, already resized by the data pipeline;
      targets (training): list of dicts with `boxes` float [N, 4] xyxy in input pixels, `labels` int64 [N] (0-based),
        `masks` uint8 [N, H, W] for mask models; N may be 0;
      original_sizes (eval, optional): (h, w) per image to map detections to.
    `static_shapes` (attribute; see __init__) chooses fixed-size or compacted tensors in training; both give the
    same losses. Training returns a dict of loss_* tensors; eval a list of dicts per image with `boxes` [D, 4]
    xyxy, `scores` [D], `labels` int64 [D] and, for mask models, `masks` bool [D, h, w], in original_sizes[i]
    (else input) pixels.
    """

    def __init__(
        self,
        transform: ImageTransform,
        backbone: nn.Module,
        neck: nn.Module,
        rpn_head: nn.Module,
        roi_head: nn.Module,
        mask_threshold: float = 0.5,
    ):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.neck = neck
        self.rpn_head = rpn_head
        self.roi_head = roi_head
        self.mask_threshold = mask_threshold
        # Fixed-size tensors through the training step (True), or padding dropped as it goes (False); None: True
        # on CUDA, where each drop is a host synchronisation that drains the GPU queue, False on the CPU, where a
        # sync costs nothing and the padding (mask-head slots above all) would cost compute.
        self.static_shapes: bool | None = None
        # Device tensors of the last training step that are no losses (the roi_head's `train_stats`, such as
        # `mask_dropped`), read by the training loop when it reads the losses: no host sync of their own.
        self.train_stats: dict[str, torch.Tensor] = {}

    def forward(
        self,
        images: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
        original_sizes: list[tuple[int, int]] | None = None,
    ):
        if self.training:
            _check_targets(targets, len(images))
        batch, image_sizes, padded_sizes = self.transform(images)
        features = self.neck(self.backbone(batch))
        static = self.training and (self.static_shapes if self.static_shapes is not None else batch.is_cuda)
        proposals, proposal_valid, rpn_losses = self.rpn_head(features, image_sizes, padded_sizes, targets, static)
        detections, roi_losses = self.roi_head(features, proposals, image_sizes, targets, proposal_valid, static)
        if self.training:
            self.train_stats = dict(getattr(self.roi_head, "train_stats", {}))
            return {**rpn_losses, **roi_losses}
        if original_sizes is not None and len(original_sizes) != len(images):
            raise ValueError(f"original_sizes: expected {len(images)} entries, got {len(original_sizes)}")
        output_sizes = original_sizes if original_sizes is not None else image_sizes
        return [
            self._postprocess(det, in_size, (int(out_size[0]), int(out_size[1])))
            for det, in_size, out_size in zip(detections, image_sizes, output_sizes)
        ]

    def _postprocess(
        self, det: dict[str, torch.Tensor], input_size: tuple[int, int], output_size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        return postprocess(det, input_size, output_size, self.mask_threshold)


def postprocess(
    det: dict[str, torch.Tensor], input_size: tuple[int, int], output_size: tuple[int, int], mask_threshold: float
) -> dict[str, torch.Tensor]:
    """Scale one image's boxes from the input size (h, w) to `output_size` and paste its `mask_probs` [D, M, M]
    (if any) at that size, binarised at `mask_threshold` -> `boxes`, `scores`, `labels` (+ bool `masks`)."""
    scale = (output_size[1] / input_size[1], output_size[0] / input_size[0])
    boxes = det["boxes"] if output_size == input_size else scale_boxes(det["boxes"], scale)
    out = {"boxes": boxes, "scores": det["scores"], "labels": det["labels"]}
    if "mask_probs" in det:
        out["masks"] = paste_masks(det["mask_probs"], boxes, output_size, mask_threshold)
    return out


def _check_targets(targets: list[dict[str, torch.Tensor]] | None, num_images: int) -> None:
    if targets is None or len(targets) != num_images:
        raise ValueError(f"targets: training needs one dict per image ({num_images}), got {targets!r:.80}")
    for i, target in enumerate(targets):
        boxes, labels = target.get("boxes"), target.get("labels")
        if boxes is None or boxes.dim() != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
            raise ValueError(f"targets[{i}]['boxes']: expected float [N, 4] xyxy")
        if labels is None or labels.shape != boxes.shape[:1] or labels.dtype != torch.int64:
            raise ValueError(f"targets[{i}]['labels']: expected int64 [N] matching boxes")

