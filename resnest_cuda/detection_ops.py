"""RoIAlign and NMS operators (SPEC §6), with argument checks, fake-tensor kernels and autograd.

Box format: ``(x1, y1, x2, y2)`` in input-image pixels; area ``(x2 - x1) * (y2 - y1)`` (no +1).
RoIAlign rois are ``[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``.
"""

import numbers

import torch

from . import _library  # noqa: F401  (loads resnest_cuda._C, which registers the ops)

__all__ = ["roi_align", "nms", "batched_nms"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_tensor(t, name: str, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def _check_float(t: torch.Tensor, name: str, op: str) -> None:
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32/float16/bfloat16/float64, got {t.dtype}")


def _check_same_device(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str, op: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; both must be on one device")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _output_size(output_size) -> tuple[int, int]:
    op = "roi_align"
    if _is_int(output_size):
        size = (int(output_size), int(output_size))
    elif isinstance(output_size, (tuple, list)) and len(output_size) == 2 and all(map(_is_int, output_size)):
        size = (int(output_size[0]), int(output_size[1]))
    else:
        raise TypeError(f"{op}: output_size must be an int or a pair of ints (height, width), got {output_size!r}")
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"{op}: output_size must be positive, got {output_size!r}")
    return size


def _check_roi_align(input, rois, spatial_scale, sampling_ratio, aligned) -> None:
    op = "roi_align"
    _check_tensor(input, "input", op)
    _check_tensor(rois, "rois", op)
    if input.dim() != 4:
        raise ValueError(f"{op}: input must be a 4-D tensor [N, C, H, W], got shape {tuple(input.shape)}")
    _check_float(input, "input", op)
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"{op}: rois must have shape [K, 5] (batch_index, x1, y1, x2, y2), got shape {tuple(rois.shape)}"
        )
    _check_float(rois, "rois", op)
    _check_same_device(rois, "rois", input, "input", op)
    if not isinstance(spatial_scale, numbers.Real) or isinstance(spatial_scale, bool) or not spatial_scale > 0:
        raise ValueError(f"{op}: spatial_scale must be a number > 0, got {spatial_scale!r}")
    if not _is_int(sampling_ratio):
        raise TypeError(f"{op}: sampling_ratio must be an int (<= 0 for adaptive), got {sampling_ratio!r}")
    if not isinstance(aligned, bool):
        raise TypeError(f"{op}: aligned must be a bool, got {aligned!r}")


def roi_align(
    input: torch.Tensor,
    rois: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> torch.Tensor:
    """RoIAlign: average of bilinear samples of ``input`` over each bin of each ROI.

    Args:
        input: ``[N, C, H, W]`` float32/float16/bfloat16/float64 feature map, NCHW, channels_last or strided.
        rois: ``[K, 5]`` floating, rows ``(batch_index, x1, y1, x2, y2)`` in image pixels, same device as input.
            Coordinates are used in fp32 (fp64 for fp64 input). On CPU an out-of-range batch index raises;
            on CUDA that ROI pools to 0.
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale: feature-map pixels per image pixel (1 / stride of the level).
        sampling_ratio: samples per bin along each axis; ``<= 0`` means ``ceil(roi_size / output_size)`` per ROI.
        aligned: True (mmcv/detectron2): pixel centres shifted by -0.5; False: legacy mode, ROI size clamped to
            >= 1 and no shift.
    Returns:
        ``[K, C, ph, pw]`` contiguous tensor of input's dtype (accumulated in fp32, fp64 for fp64).
        Differentiable w.r.t. input; rois receive no gradient.
    """
    ph, pw = _output_size(output_size)
    _check_roi_align(input, rois, spatial_scale, sampling_ratio, aligned)
    return torch.ops.resnest_cuda.roi_align(input, rois, float(spatial_scale), ph, pw, int(sampling_ratio), aligned)


def _check_boxes_scores(boxes, scores, iou_threshold, op: str) -> None:
    _check_tensor(boxes, "boxes", op)
    _check_tensor(scores, "scores", op)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{op}: boxes must have shape [N, 4] (x1, y1, x2, y2), got shape {tuple(boxes.shape)}")
    _check_float(boxes, "boxes", op)
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{op}: scores must have shape [{boxes.shape[0]}] (one per box), got shape {tuple(scores.shape)}"
        )
    _check_float(scores, "scores", op)
    _check_same_device(scores, "scores", boxes, "boxes", op)
    if not isinstance(iou_threshold, numbers.Real) or isinstance(iou_threshold, bool):
        raise TypeError(f"{op}: iou_threshold must be a number, got {iou_threshold!r}")


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: ``[N, 4]`` floating xyxy boxes (IoU computed in fp32, fp64 for fp64 boxes).
        scores: ``[N]`` floating scores, same device.
        iou_threshold: a box is dropped when its IoU with a higher-scoring kept box is > iou_threshold.
    Returns:
        ``[M]`` int64 indices of the kept boxes, by descending score (ties: lower index first).
    """
    _check_boxes_scores(boxes, scores, iou_threshold, "nms")
    return torch.ops.resnest_cuda.nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each category: boxes of different ``idxs`` never suppress each other.

    Args:
        boxes, scores, iou_threshold: as for :func:`nms`.
        idxs: ``[N]`` integer category of each box, same device.
    Returns:
        ``[M]`` int64 indices of the kept boxes of all categories, by descending score (ties: lower index first).
    """
    op = "batched_nms"
    _check_boxes_scores(boxes, scores, iou_threshold, op)
    _check_tensor(idxs, "idxs", op)
    if idxs.dim() != 1 or idxs.shape[0] != boxes.shape[0]:
        raise ValueError(f"{op}: idxs must have shape [{boxes.shape[0]}] (one per box), got shape {tuple(idxs.shape)}")
    if idxs.dtype.is_floating_point or idxs.dtype.is_complex or idxs.dtype == torch.bool:
        raise TypeError(f"{op}: idxs must be an integer tensor, got {idxs.dtype}")
    _check_same_device(idxs, "idxs", boxes, "boxes", op)
    # Offset trick: move each category to its own region of the plane, then run one NMS. The span covers
    # negative coordinates too (plain max + 1 would let categories overlap when boxes reach below -1). A zero is
    # appended so that no branch on the (possibly data-dependent) box count is needed: torch.export can trace it.
    b = boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()
    coords = torch.cat([b.reshape(-1), b.new_zeros(1)])
    span = coords.max() - coords.min() + 1
    return torch.ops.resnest_cuda.nms(b + (idxs.to(b.dtype) * span)[:, None], scores, float(iou_threshold))


# --------------------------------------------------------------------------------------------------------------
# Fake (meta) kernels, for torch.compile and opcheck.


@torch.library.register_fake("resnest_cuda::roi_align")
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    torch._check(input.dim() == 4, lambda: f"roi_align: input must be 4-D, got {input.dim()} dims")
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "roi_align: rois must have shape [K, 5]")
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@torch.library.register_fake("resnest_cuda::roi_align_backward")
def _roi_align_backward_fake(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio, aligned
):
    return grad.new_empty((batch_size, channels, height, width))


@torch.library.register_fake("resnest_cuda::nms")
def _nms_fake(boxes, scores, iou_threshold):
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "nms: boxes must have shape [N, 4]")
    # How many boxes survive depends on their values: an unbacked size.
    num_kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((num_kept,), dtype=torch.long)


# --------------------------------------------------------------------------------------------------------------
# Autograd: the backward is itself a registered op, so torch.compile traces it like any other.


def _roi_align_setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = input.shape  # the values of input are not needed
    ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def _roi_align_backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ctx.params
    batch_size, channels, height, width = ctx.input_shape
    grad_input = torch.ops.resnest_cuda.roi_align_backward(
        grad,
        rois,
        spatial_scale,
        pooled_height,
        pooled_width,
        batch_size,
        channels,
        height,
        width,
        sampling_ratio,
        aligned,
    )
    return grad_input, None, None, None, None, None, None


torch.library.register_autograd("resnest_cuda::roi_align", _roi_align_backward, setup_context=_roi_align_setup_context)
