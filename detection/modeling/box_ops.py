"""Box math as pure tensor functions. Boxes are float [N, 4] (x1, y1, x2, y2) in pixels; width = x2 - x1 (no +1)."""

import math

import torch

# Largest |dw|, |dh| accepted when decoding: a box may grow or shrink at most 1000/16 times per step.
MAX_LOG_SCALE = math.log(1000.0 / 16)
# Smallest width and height `encode_boxes` divides by or takes the log of (pixels).
MIN_ENCODE_SIZE = 1e-2


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """[N, 4] xyxy -> [N] areas."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pairwise IoU: [N, 4], [M, 4] xyxy -> [N, M]. Degenerate (zero-area) pairs get IoU 0."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union.clamp(min=eps)


def _normalise(t: torch.Tensor, means: tuple[float, float], stds: tuple[float, float], inverse: bool) -> torch.Tensor:
    """(t - mean) / std (inverse: t * std + mean) on a coordinate pair t [..., 2], with Python scalars (no copy of
    host data to the device, which a CUDA graph forbids): one op per step for the pair when its two coordinates
    share their mean and std, none where mean = 0 or std = 1 (the same values: x - 0, x / 1 and x * 1 are exact)."""
    if means[0] != means[1] or stds[0] != stds[1]:
        return torch.stack([_normalise(t[..., i : i + 1], (means[i],) * 2, (stds[i],) * 2, inverse)[..., 0]
                            for i in range(2)], dim=-1)
    mean, std = means[0], stds[0]
    if inverse:
        t = t * std if std != 1 else t
        return t + mean if mean != 0 else t
    t = t - mean if mean != 0 else t
    return t / std if std != 1 else t


def encode_boxes(
    boxes: torch.Tensor,
    gt_boxes: torch.Tensor,
    means: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0),
    stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0),
) -> torch.Tensor:
    """Regression targets (dx, dy, dw, dh) taking `boxes` [N, 4] to `gt_boxes` [N, 4], normalised as
    (delta - means) / stds. Computed in fp32; returns fp32 [N, 4].

    Widths and heights below MIN_ENCODE_SIZE (zero, negative or tiny boxes, which a dataset of one's own may hold)
    count as MIN_ENCODE_SIZE, so every target is finite; boxes of a pixel and more are encoded exactly.
    Coordinates are handled in (x, y) pairs: a dozen small ops per call, not one chain per coordinate."""
    boxes = boxes.float()
    gt_boxes = gt_boxes.float()
    p_wh = boxes[:, 2:] - boxes[:, :2]
    p_ctr = boxes[:, :2] + 0.5 * p_wh
    g_wh = gt_boxes[:, 2:] - gt_boxes[:, :2]
    g_ctr = gt_boxes[:, :2] + 0.5 * g_wh
    p_wh, g_wh = p_wh.clamp(min=MIN_ENCODE_SIZE), g_wh.clamp(min=MIN_ENCODE_SIZE)
    d_xy = _normalise((g_ctr - p_ctr) / p_wh, means[:2], stds[:2], inverse=False)
    d_wh = _normalise(torch.log(g_wh / p_wh), means[2:], stds[2:], inverse=False)
    return torch.cat([d_xy, d_wh], dim=1)


def decode_boxes(
    boxes: torch.Tensor,
    deltas: torch.Tensor,
    means: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0),
    stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0),
    max_shape: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Apply normalised deltas [..., 4] to `boxes` [..., 4] (broadcastable), inverse of `encode_boxes`.

    Decoding runs in fp32 (exp of half-precision deltas overflows) and clamps dw, dh to +-log(1000/16) so one bad
    prediction cannot produce an inf box. With `max_shape` = (h, w) the result is clipped to the image.
    Returns fp32 boxes of the broadcast shape. Coordinates are handled in (x, y) pairs, as in `encode_boxes`.
    """
    boxes = boxes.float()
    deltas = deltas.float()
    d_xy = _normalise(deltas[..., :2], means[:2], stds[:2], inverse=True)
    d_wh = _normalise(deltas[..., 2:], means[2:], stds[2:], inverse=True).clamp(min=-MAX_LOG_SCALE, max=MAX_LOG_SCALE)
    p_wh = boxes[..., 2:] - boxes[..., :2]
    p_ctr = boxes[..., :2] + 0.5 * p_wh
    g_ctr = p_ctr + p_wh * d_xy
    half = 0.5 * (p_wh * torch.exp(d_wh))
    out = torch.cat([g_ctr - half, g_ctr + half], dim=-1)
    if max_shape is not None:
        out = clip_boxes(out, max_shape)
    return out


def clip_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Clip [..., 4] xyxy boxes to an image of size (h, w): x to [0, w], y to [0, h]."""
    h, w = size
    x = boxes[..., 0::2].clamp(min=0, max=w)
    y = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def nonempty_box_mask(boxes: torch.Tensor, min_size: float = 0.0) -> torch.Tensor:
    """[N, 4] -> bool [N]: boxes whose width and height are both > min_size."""
    return ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)


def scale_boxes(boxes: torch.Tensor, scale_xy: tuple[float, float]) -> torch.Tensor:
    """Multiply x coordinates by scale_xy[0] and y coordinates by scale_xy[1]. [N, 4] -> [N, 4]."""
    sx, sy = scale_xy
    return boxes * boxes.new_tensor([sx, sy, sx, sy])


class BoxCoder:
    """Delta coder with fixed normalisation `means`, `stds` (see `encode_boxes` / `decode_boxes`)."""

    def __init__(self, means: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0), stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)):
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)

    def encode(self, boxes: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        return encode_boxes(boxes, gt_boxes, self.means, self.stds)

    def decode(
        self, boxes: torch.Tensor, deltas: torch.Tensor, max_shape: tuple[int, int] | None = None
    ) -> torch.Tensor:
        return decode_boxes(boxes, deltas, self.means, self.stds, max_shape)
