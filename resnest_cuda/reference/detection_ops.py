"""RoIAlign and NMS in plain PyTorch: the executable specification of the kernels (SPEC §6).

Box format everywhere: ``(x1, y1, x2, y2)`` in input-image pixels; rois carry a leading batch index.
"""

import torch

_ROI_CHUNK = 64  # ROIs pooled together; bounds the [C, chunk, Lh, Lw] gathered windows
MAX_ADAPTIVE_GRID = 64  # cap of the adaptive grid: kMaxAdaptiveGrid in csrc/roi_align/roi_align.h


def _pair(output_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    return int(output_size[0]), int(output_size[1])


def _axis_taps(
    lo: torch.Tensor, hi: torch.Tensor, pooled: int, size: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear-interpolation taps of every sample along one axis.

    lo, hi: ``[K]`` ROI edges along this axis (image pixels), in the accumulation dtype.
    Returns ``index`` (int64) and ``weight``, both ``[K, pooled, 2S]`` (S = the largest grid of any ROI): the
    ``2S`` taps of bin ``p``. Sample ``i`` of bin ``p`` sits at ``v = start + p*bin + (i + 0.5)*bin/grid``; outside
    ``[-1, size]`` it contributes 0; below 0 it is clamped to 0; it interpolates between ``floor(v)`` and
    ``floor(v) + 1`` (both the last row/column when ``floor(v) >= size - 1``). Weights include the ``1/grid`` of
    the mean; unused taps (``i >= grid``) have weight 0; a ROI with a non-finite edge has no taps at all.
    """
    offset = 0.5 if aligned else 0.0
    start = lo * spatial_scale - offset
    length = hi * spatial_scale - offset - start
    finite = torch.isfinite(start) & torch.isfinite(length)  # before the legacy clamp, which maps NaN to 1
    if not aligned:
        length = length.clamp(min=1.0)  # legacy mode: ROIs are at least 1x1
    bin_size = length / pooled
    if sampling_ratio > 0:
        grid = torch.full_like(bin_size, float(sampling_ratio))
    else:  # adaptive: ceil(roi / pooled) samples per bin, capped (in floating point) at MAX_ADAPTIVE_GRID
        grid = torch.ceil(bin_size).clamp(min=0, max=MAX_ADAPTIVE_GRID)
    grid = torch.where(finite, grid, 0.0)  # a non-finite ROI has no samples: it pools to 0
    start, bin_size = torch.where(finite, start, 0.0), torch.where(finite, bin_size, 0.0)
    num_samples = int(grid.max().item()) if grid.numel() else 0
    p = torch.arange(pooled, dtype=lo.dtype, device=lo.device).view(1, pooled, 1)
    i = torch.arange(num_samples, dtype=lo.dtype, device=lo.device).view(1, 1, num_samples)
    start, bin_size, grid = start.view(-1, 1, 1), bin_size.view(-1, 1, 1), grid.view(-1, 1, 1)
    v = start + p * bin_size + (i + 0.5) * bin_size / grid  # [K, pooled, S]
    valid = (i < grid) & (v >= -1.0) & (v <= size)
    v = v.clamp(min=0.0)
    low = torch.floor(v)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    v = torch.where(at_edge, low, v)
    frac = v - low
    scale = valid.to(v.dtype) / grid.clamp(min=1)
    index = torch.cat([low, high], dim=2).clamp(0, size - 1).long()
    weight = torch.cat([(1 - frac) * scale, frac * scale], dim=2)
    valid2 = torch.cat([valid, valid], dim=2)
    return torch.where(valid2, index, 0), torch.where(valid2, weight, 0.0)  # where() also drops NaNs of grid 0


def _window_weights(index: torch.Tensor, weight: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Taps ``[K, pooled, 2S]`` -> the window of rows (or columns) each ROI touches and its dense weights.

    Returns ``first`` ``[K]`` (int64) and ``dense`` ``[K, pooled, L]`` with ``dense[k, p, j]`` = total weight of
    row ``first[k] + j`` in bin ``p`` (L = the widest window).
    """
    used = weight != 0
    if not bool(used.any()):
        return index.new_zeros(index.shape[0]), weight.new_zeros(index.shape[0], index.shape[1], 1)
    first = torch.where(used, index, size).amin(dim=(1, 2)).clamp(max=size - 1)
    last = torch.where(used, index, -1).amax(dim=(1, 2))
    length = int((last - first + 1).max().clamp(min=1))
    local = torch.where(used, index - first[:, None, None], 0)
    dense = weight.new_zeros(index.shape[0], index.shape[1], length)
    return first, dense.scatter_add_(2, local, weight)


def roi_align(
    input: torch.Tensor,
    rois: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> torch.Tensor:
    """RoIAlign by its definition: each output bin is the mean of bilinear samples of the feature map.

    A bilinear sample is the product of the linear taps of its row and its column coordinate, so the mean over a
    bin is ``Wy[k, p] @ window_k @ Wx[k, q]^T``, with the summed tap weights of ``_axis_taps`` laid out densely over
    the window of rows and columns the ROI touches.

    Args:
        input: ``[N, C, H, W]`` floating feature map.
        rois: ``[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` in image pixels.
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale: feature-map pixels per image pixel (1 / stride).
        sampling_ratio: samples per bin along each axis; ``<= 0`` means ``ceil(roi_size / output_size)`` per ROI,
            at most ``MAX_ADAPTIVE_GRID``.
        aligned: shift by -0.5 pixel (mmcv/detectron2); False is the legacy mode (no shift, ROI size >= 1).

    A ROI whose batch index is outside ``[0, N)`` or NaN, or with a non-finite coordinate, pools to 0.
    Returns:
        ``[K, C, ph, pw]`` in input's dtype (computed in fp32, or fp64 for fp64 input); differentiable w.r.t. input.
    """
    ph, pw = _pair(output_size)
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    feats = input.to(acc)
    r = rois.to(acc)
    n_img, channels, height, width = input.shape
    out = feats.new_zeros(r.shape[0], channels, ph, pw)
    if out.numel() == 0 or height == 0 or width == 0:  # nothing to pool, or nothing to sample from
        return out.to(input.dtype)
    y0, wy = _window_weights(*_axis_taps(r[:, 2], r[:, 4], ph, height, spatial_scale, sampling_ratio, aligned), height)
    x0, wx = _window_weights(*_axis_taps(r[:, 1], r[:, 3], pw, width, spatial_scale, sampling_ratio, aligned), width)
    # Window rows/columns past the map get weight 0; clamping only keeps their indices valid.
    rows = (y0[:, None] + torch.arange(wy.shape[2], device=r.device)).clamp(max=height - 1)  # [K, Lh]
    cols = (x0[:, None] + torch.arange(wx.shape[2], device=r.device)).clamp(max=width - 1)  # [K, Lw]
    in_range = (r[:, 0] >= 0) & (r[:, 0] < n_img)  # False for NaN
    batch = torch.where(in_range, r[:, 0], -1.0).long()  # out of range: matches no image, pools to 0
    for n in range(n_img):
        for k in (batch == n).nonzero()[:, 0].split(_ROI_CHUNK):
            window = feats[n][:, rows[k][:, :, None], cols[k][:, None, :]]  # [C, k, Lh, Lw]
            out[k] = torch.einsum("kph,ckhw,kqw->kcpq", wy[k], window, wx[k])
    return out.to(input.dtype)


def pyramid_levels(boxes: torch.Tensor, num_levels: int, finest_scale: float = 56.0) -> torch.Tensor:
    """Pyramid level per xyxy box ``[K, 4]`` -> int64 ``[K]`` (mmdetection's rule):
    ``clamp(floor(log2(sqrt(w*h) / finest_scale + 1e-6)), 0, L-1)`` in the dtype of ``boxes``, the floor of the
    log read exactly from the binary exponent (``frexp``); a non-positive or NaN value gives level 0, an infinite
    one the coarsest level."""
    s = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / finest_scale + 1e-6
    finite = (s > 0) & torch.isfinite(s)
    level = torch.frexp(torch.where(finite, s, torch.ones_like(s))).exponent.long() - 1
    level = torch.where(finite, level, torch.where(s > 0, num_levels - 1, 0))
    return level.clamp(0, num_levels - 1)


def multi_level_roi_align(
    features: list[torch.Tensor],
    rois: torch.Tensor,
    output_size: int | tuple[int, int],
    strides,
    finest_scale: float = 56.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> torch.Tensor:
    """Each ROI pooled by :func:`roi_align` from ``features[level]`` (:func:`pyramid_levels`, computed in fp32, or
    fp64 for fp64 features) with ``spatial_scale = 1 / strides[level]``. features: L ``[N, C, H_l, W_l]``;
    rois ``[K, 5]`` -> ``[K, C, ph, pw]``."""
    ph, pw = _pair(output_size)
    acc = torch.float64 if features[0].dtype == torch.float64 else torch.float32
    levels = pyramid_levels(rois[:, 1:].to(acc), len(features), finest_scale)
    out = features[0].new_zeros(rois.shape[0], features[0].shape[1], ph, pw)
    for level, (feature, stride) in enumerate(zip(features, strides)):
        idx = (levels == level).nonzero()[:, 0]
        if idx.numel() and feature.shape[2] and feature.shape[3]:
            out = out.index_put((idx,), roi_align(feature, rois[idx], (ph, pw), 1.0 / stride, sampling_ratio, aligned))
    return out


def _iou_one_to_many(box: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """IoU of one xyxy box ``[4]`` with ``[M, 4]`` boxes -> ``[M]``; area ``(x2-x1)*(y2-y1)``, no +1."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    w = (torch.minimum(others[:, 2], box[2]) - torch.maximum(others[:, 0], box[0])).clamp(min=0)
    h = (torch.minimum(others[:, 3], box[3]) - torch.maximum(others[:, 1], box[1])).clamp(min=0)
    inter = w * h
    return inter / (area + areas - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: int = -1) -> torch.Tensor:
    """Greedy NMS. boxes ``[N, 4]`` xyxy, scores ``[N]`` -> int64 kept indices in descending score order.

    Boxes are visited by descending score (ties: lower index first); a box is kept unless its IoU with an
    already kept box is > iou_threshold. IoUs are computed in fp32 (fp64 for fp64 boxes). With ``max_keep >= 0``
    only the first ``max_keep`` kept indices are returned.
    """
    if max_keep >= 0:
        return nms(boxes, scores, iou_threshold)[:max_keep]
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes.to(torch.float64 if boxes.dtype == torch.float64 else torch.float32)[order]
    suppressed = torch.zeros(b.shape[0], dtype=torch.bool, device=b.device)
    keep = []
    for i in range(b.shape[0]):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[i + 1 :] |= _iou_one_to_many(b[i], b[i + 1 :]) > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=b.device)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float, max_keep: int = -1
) -> torch.Tensor:
    """NMS within each class of ``idxs`` ``[N]``; kept indices of all classes in descending score order
    (ties: lower index first); the first ``max_keep`` of them when ``max_keep >= 0``."""
    if max_keep >= 0:
        return batched_nms(boxes, scores, idxs, iou_threshold)[:max_keep]
    keep = []
    for c in torch.unique(idxs):
        cls_idx = (idxs == c).nonzero()[:, 0]
        keep.append(cls_idx[nms(boxes[cls_idx], scores[cls_idx], iou_threshold)])
    if not keep:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    kept = torch.cat(keep).sort().values
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def pad_fixed(keep: torch.Tensor, max_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept indices ``[M]`` -> the fixed-size form ``(keep [max_keep] int64 padded with 0, valid [max_keep] bool)``
    (the first ``max_keep`` of them)."""
    keep = keep[:max_keep]
    out = torch.zeros(max_keep, dtype=torch.long, device=keep.device)
    valid = torch.zeros(max_keep, dtype=torch.bool, device=keep.device)
    out[: keep.numel()] = keep
    valid[: keep.numel()] = True
    return out, valid


def nms_fixed(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``nms`` in the fixed-size form of :func:`pad_fixed`."""
    return pad_fixed(nms(boxes, scores, iou_threshold, max_keep), max_keep)


def batched_nms_fixed(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float, max_keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batched_nms`` in the fixed-size form of :func:`pad_fixed`."""
    return pad_fixed(batched_nms(boxes, scores, idxs, iou_threshold, max_keep), max_keep)
