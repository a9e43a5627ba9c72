"""RoIAlign and NMS operators (SPEC §6): Python wrappers, the NMS fake kernel and autograd (to any order for RoIAlign).

RoIAlign's arguments are checked by the op itself (csrc/roi_align/roi_align.h; its Meta kernel serves fake tensors),
so the wrapper, raw ``torch.ops.resnest_cuda.roi_align`` and ``torch.compile`` raise the same errors.

Box format: ``(x1, y1, x2, y2)`` in input-image pixels; area ``(x2 - x1) * (y2 - y1)`` (no +1).
RoIAlign rois are ``[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``.
"""

import numbers

import torch

from ._library import refuse_functorch_transforms  # (importing _library loads resnest_cuda._C: the ops)

__all__ = ["roi_align", "multi_level_roi_align", "nms", "batched_nms", "nms_fixed", "batched_nms_fixed"]

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
    if _is_int(output_size):
        return int(output_size), int(output_size)
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2 and all(map(_is_int, output_size)):
        return int(output_size[0]), int(output_size[1])
    raise TypeError(f"roi_align: output_size must be an int or a pair of ints (height, width), got {output_size!r}")


def _check_roi_align_args(input, rois, spatial_scale, sampling_ratio, aligned) -> None:
    # Python object types only: the tensors and the values (shapes, dtypes, devices, output_size > 0,
    # spatial_scale > 0) are checked by the op itself (csrc/roi_align/roi_align.h), on every device and under
    # torch.compile, with the same errors.
    op = "roi_align"
    _check_tensor(input, "input", op)
    _check_tensor(rois, "rois", op)
    if not isinstance(spatial_scale, numbers.Real) or isinstance(spatial_scale, bool):
        raise TypeError(f"{op}: spatial_scale must be a number > 0, got {spatial_scale!r}")
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
            Coordinates are used in fp32 (fp64 for fp64 input). A ROI whose batch index is outside ``[0, N)``
            (or NaN), or with a non-finite coordinate, pools to 0 and receives no gradient, on CPU and CUDA alike
            (no host synchronisation to check them); a fractional batch index is truncated.
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale: feature-map pixels per image pixel (1 / stride of the level).
        sampling_ratio: samples per bin along each axis; ``<= 0`` means ``ceil(roi_size / output_size)`` per ROI,
            capped at 64 (kMaxAdaptiveGrid in csrc/roi_align/roi_align.h: identical results for ROIs up to
            64 * output_size feature-map pixels, bounded time for larger or infinite ones).
        aligned: True (mmcv/detectron2): pixel centres shifted by -0.5; False: legacy mode, ROI size clamped to
            >= 1 and no shift.
    Returns:
        ``[K, C, ph, pw]`` tensor of input's dtype (accumulated in fp32, fp64 for fp64): channels_last for a
        channels_last input, else contiguous. Differentiable w.r.t. input to any order (the backward is linear in
        the output gradient); rois receive no gradient. The gradient of a channels_last input is channels_last
        (accumulated in that layout), else contiguous. On CUDA the backward accumulates with
        atomics: it raises under ``torch.use_deterministic_algorithms(True)`` (warns with ``warn_only=True``).
    """
    ph, pw = _output_size(output_size)
    _check_roi_align_args(input, rois, spatial_scale, sampling_ratio, aligned)
    refuse_functorch_transforms("roi_align")
    return torch.ops.resnest_cuda.roi_align(input, rois, float(spatial_scale), ph, pw, int(sampling_ratio), aligned)


def _check_multi_level(features, rois, strides, finest_scale, sampling_ratio, aligned) -> None:
    op = "multi_level_roi_align"
    if not isinstance(features, (list, tuple)):
        raise TypeError(f"{op}: features must be a list of tensors [N, C, H_l, W_l], got {type(features).__name__}")
    if not 1 <= len(features) <= 8:
        raise ValueError(f"{op}: features must hold 1 to 8 levels, got {len(features)}")
    for i, f in enumerate(features):
        _check_tensor(f, f"features[{i}]", op)
        if f.dim() != 4:
            raise ValueError(f"{op}: features[{i}] must be a 4-D tensor [N, C, H, W], got shape {tuple(f.shape)}")
        _check_float(f, f"features[{i}]", op)
        if f.dtype != features[0].dtype or f.device != features[0].device or f.shape[:2] != features[0].shape[:2]:
            raise ValueError(f"{op}: features[{i}] is {f.dtype} {tuple(f.shape)} on {f.device}; every level needs "
                             f"features[0]'s dtype ({features[0].dtype}), device ({features[0].device}), batch size "
                             f"and channels {tuple(features[0].shape[:2])}")
    _check_tensor(rois, "rois", op)
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"{op}: rois must have shape [K, 5] (batch_index, x1, y1, x2, y2), got shape {tuple(rois.shape)}"
        )
    _check_float(rois, "rois", op)
    _check_same_device(rois, "rois", features[0], "features[0]", op)
    if not isinstance(strides, (list, tuple)) or len(strides) != len(features) or not all(
        isinstance(s, numbers.Real) and not isinstance(s, bool) and s > 0 for s in strides
    ):
        raise ValueError(f"{op}: strides must be {len(features)} positive numbers (one per level), got {strides!r}")
    if not isinstance(finest_scale, numbers.Real) or isinstance(finest_scale, bool) or not finest_scale > 0:
        raise ValueError(f"{op}: finest_scale must be a number > 0, got {finest_scale!r}")
    if not _is_int(sampling_ratio):
        raise TypeError(f"{op}: sampling_ratio must be an int (<= 0 for adaptive), got {sampling_ratio!r}")
    if not isinstance(aligned, bool):
        raise TypeError(f"{op}: aligned must be a bool, got {aligned!r}")


def multi_level_roi_align(
    features: list[torch.Tensor],
    rois: torch.Tensor,
    output_size: int | tuple[int, int],
    strides: tuple[float, ...] | list[float],
    finest_scale: float = 56.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> torch.Tensor:
    """RoIAlign over a feature pyramid in one op: each ROI is pooled from the level its size maps to.

    Level of a ROI of ``w x h`` image pixels (mmdetection's rule, picked on the device, no host synchronisation):
    ``clamp(floor(log2(sqrt(w * h) / finest_scale + 1e-6)), 0, L - 1)``, computed in fp32 (fp64 for fp64
    features), the floor of the log taken exactly from the binary exponent; empty or NaN-sized ROIs go to level 0.
    Each ROI is then pooled exactly as :func:`roi_align` pools it from ``features[level]`` with
    ``spatial_scale = 1 / strides[level]``.

    Args:
        features: L (1-8) tensors ``[N, C, H_l, W_l]``, one dtype (float32/float16/bfloat16/float64) and device,
            each NCHW, channels_last or strided.
        rois: ``[K, 5]`` floating, rows ``(batch_index, x1, y1, x2, y2)`` in image pixels, same device.
        output_size: ``ph`` or ``(ph, pw)``.
        strides: L positive numbers, the stride of each level in image pixels (4, 8, 16, 32 for P2-P5).
        finest_scale, sampling_ratio, aligned: as above and as for :func:`roi_align`.
    Returns:
        ``[K, C, ph, pw]`` tensor of the features' dtype, channels_last when every level is channels_last (a level
        that is also contiguous, C == 1 or a 1x1 map, does not decide), else contiguous; differentiable w.r.t.
        every level (gradients ``[N, C, H_l, W_l]``, channels_last for a channels_last level, else contiguous;
        double backward is exact); rois receive no gradient. RoIs with a non-finite coordinate or a batch index
        outside ``[0, N)`` pool to 0, as in :func:`roi_align`. The CUDA backward accumulates with atomics: it
        raises under ``torch.use_deterministic_algorithms(True)``.
    """
    ph, pw = _output_size(output_size)
    _check_multi_level(features, rois, strides, finest_scale, sampling_ratio, aligned)
    refuse_functorch_transforms("multi_level_roi_align")
    scales = [1.0 / float(s) for s in strides]
    return torch.ops.resnest_cuda.multi_level_roi_align(
        list(features), rois, scales, ph, pw, float(finest_scale), int(sampling_ratio), aligned
    )


def _check_nms_args(boxes, scores, iou_threshold, max_keep, op: str) -> int:
    """The arguments only Python sees (non-tensors, the scalar types). The op's own rules on the tensors and
    max_keep (csrc/nms/nms.h) are applied by its kernels; the batched wrappers' offset path, which computes on the
    boxes before the op runs, applies them first through `_nms_check` (the same errors as the kernels and the fake
    kernels)."""
    _check_tensor(boxes, "boxes", op)
    _check_tensor(scores, "scores", op)
    if not isinstance(iou_threshold, numbers.Real) or isinstance(iou_threshold, bool):
        raise TypeError(f"{op}: iou_threshold must be a number, got {iou_threshold!r}")
    if not _is_int(max_keep):
        raise TypeError(f"{op}: max_keep must be an int, got {max_keep!r}")
    return int(max_keep)


def _check_batched_nms_args(boxes, scores, idxs, iou_threshold, max_keep, op: str) -> int:
    _check_tensor(idxs, "idxs", op)
    return _check_nms_args(boxes, scores, iou_threshold, max_keep, op)


def _offset_by_category(boxes: torch.Tensor, idxs: torch.Tensor) -> torch.Tensor:
    """Move each category to its own region of the plane, so that one NMS never lets categories suppress each
    other. The span covers negative coordinates too (plain max + 1 would let categories overlap when boxes reach
    below -1). A zero is appended so that no branch on the (possibly data-dependent) box count is needed:
    torch.export can trace it. Device-side only: no host synchronisation."""
    b = boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()
    coords = torch.cat([b.reshape(-1), b.new_zeros(1)])
    span = coords.max() - coords.min() + 1
    return b + (idxs.to(b.dtype) * span)[:, None]


def _checked_offset_boxes(boxes, scores, idxs, max_keep: int, fixed: bool, op: str) -> torch.Tensor:
    """The offset path's boxes, after NMS's argument rules (with idxs) are applied through `_nms_check`."""
    torch.ops.resnest_cuda._nms_check(boxes, scores, max_keep, fixed, op, idxs)
    return _offset_by_category(boxes, idxs)


def _per_class_path() -> bool:
    """Whether batched NMS runs as `_batched_nms_per_class[_fixed]` (a box suppresses only boxes of its category;
    on the CPU it is compared only with them: faster than the offset path at every size measured without
    max_keep, 100 to 80k boxes, and on par with a small max_keep; benchmarks/RESULTS.md "NMS: the two batched
    paths") rather than as nms over boxes offset by category. torch.export keeps the offset path: its graphs hold
    only the nms op, which has an ONNX translation."""
    return not torch.compiler.is_exporting()


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: int = -1) -> torch.Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: ``[N, 4]`` floating xyxy boxes (IoU computed in fp32, fp64 for fp64 boxes).
        scores: ``[N]`` floating scores, same device.
        iou_threshold: a box is dropped when its IoU with a higher-scoring kept box is > iou_threshold.
        max_keep: stop the sweep once this many boxes are kept (``-1``: no limit); the result is then the first
            ``max_keep`` entries of the unlimited result.
    Returns:
        ``[M]`` int64 indices of the kept boxes, by descending score (ties: lower index first); ``M`` depends on
        the data (a host synchronisation on CUDA; :func:`nms_fixed` has a fixed size).
    """
    max_keep = _check_nms_args(boxes, scores, iou_threshold, max_keep, "nms")
    return torch.ops.resnest_cuda.nms(boxes, scores, float(iou_threshold), max_keep)


def nms_fixed(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy NMS with a fixed-size result: no data-dependent shape, no host synchronisation on CUDA.

    Args:
        boxes, scores, iou_threshold: as for :func:`nms`.
        max_keep: number of entries returned (>= 0).
    Returns:
        ``keep`` ``[max_keep]`` int64: ``nms(boxes, scores, iou_threshold, max_keep)`` followed by padding 0;
        ``valid`` ``[max_keep]`` bool: True for the kept entries (a prefix).
    """
    max_keep = _check_nms_args(boxes, scores, iou_threshold, max_keep, "nms_fixed")
    return torch.ops.resnest_cuda.nms_fixed(boxes, scores, float(iou_threshold), max_keep)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float, max_keep: int = -1
) -> torch.Tensor:
    """NMS within each category: boxes of different ``idxs`` never suppress each other.

    Args:
        boxes, scores, iou_threshold, max_keep: as for :func:`nms` (``max_keep`` counts the kept boxes of all
            categories together).
        idxs: ``[N]`` integer category of each box, same device.
    Returns:
        ``[M]`` int64 indices of the kept boxes of all categories, by descending score (ties: lower index first).

    Two paths, one result: one op in which a box suppresses only boxes of its own category (on the CPU it is
    compared only with them: the cost grows with the squared size of each category instead of the squared
    total; on CUDA one bitmask as for :func:`nms`, with no bit set across categories), and, in graphs made by
    torch.export, one NMS over boxes offset by category. They keep the same boxes in the same order when the
    offset coordinates are exact (as for integer coordinates below 2**24 in fp32) and ``iou_threshold >= 0``;
    otherwise the first computes the IoUs on the boxes as given (as the reference does), while the offset one
    rounds the offset coordinates, lets categories suppress each other at a negative threshold, and keeps
    every box once a coordinate is not finite (the offsets turn every box into NaN).
    """
    op = "batched_nms"
    max_keep = _check_batched_nms_args(boxes, scores, idxs, iou_threshold, max_keep, op)
    if _per_class_path():
        return torch.ops.resnest_cuda._batched_nms_per_class(boxes, scores, idxs, float(iou_threshold), max_keep)
    moved = _checked_offset_boxes(boxes, scores, idxs, max_keep, False, op)
    return torch.ops.resnest_cuda.nms(moved, scores, float(iou_threshold), max_keep)


def batched_nms_fixed(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float, max_keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`batched_nms` with the fixed-size result of :func:`nms_fixed`: ``(keep [max_keep] int64 padded with 0,
    valid [max_keep] bool)``; the same two paths."""
    op = "batched_nms_fixed"
    max_keep = _check_batched_nms_args(boxes, scores, idxs, iou_threshold, max_keep, op)
    if _per_class_path():
        return torch.ops.resnest_cuda._batched_nms_per_class_fixed(boxes, scores, idxs, float(iou_threshold), max_keep)
    moved = _checked_offset_boxes(boxes, scores, idxs, max_keep, True, op)
    return torch.ops.resnest_cuda.nms_fixed(moved, scores, float(iou_threshold), max_keep)


# --------------------------------------------------------------------------------------------------------------
# Fake kernels of nms (its output size depends on the values) and nms_fixed: they apply the kernels' argument rules
# through `_nms_check` (csrc/nms/nms.h). RoIAlign's fake tensors run its C++ Meta kernels
# (csrc/roi_align/roi_align.cpp), which share the argument checks of the CPU and CUDA kernels.


def _channels_last(maps) -> bool:
    """The layout rule of the RoIAlign results (pools_channels_last in csrc/roi_align/roi_align.h, which the kernels
    apply): channels_last when every map is channels_last and one at least is not also plain contiguous (a map with
    C == 1 or H == W == 1 is both and does not decide). The autograd formulas ask for each input's gradient in the
    layout this gives for that input alone."""
    cl = [m.dim() == 4 and m.is_contiguous(memory_format=torch.channels_last) for m in maps]
    return len(maps) > 0 and all(cl) and any(c and not m.is_contiguous() for c, m in zip(cl, maps))


def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


@torch.library.register_fake("resnest_cuda::multi_level_roi_align")
def _multi_level_roi_align_fake(features, rois, spatial_scales, pooled_height, pooled_width, finest_scale,
                                sampling_ratio, aligned):
    torch._check(len(features) >= 1, lambda: "multi_level_roi_align: features must not be empty")
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "multi_level_roi_align: rois must be [K, 5]")
    first = features[0]
    shape = (rois.shape[0], first.shape[1], pooled_height, pooled_width)
    return torch.empty(shape, dtype=first.dtype, device=first.device,
                       memory_format=_memory_format(_channels_last(features)))


@torch.library.register_fake("resnest_cuda::multi_level_roi_align_backward")
def _multi_level_roi_align_backward_fake(grad, rois, spatial_scales, pooled_height, pooled_width, batch_size,
                                         channels, heights, widths, finest_scale, sampling_ratio, aligned,
                                         channels_last=()):
    torch._check(len(channels_last) in (0, len(heights)),
                 lambda: f"multi_level_roi_align_backward: channels_last needs one flag per level ({len(heights)}) "
                         f"or none, got {len(channels_last)}")
    layouts = list(channels_last) or [False] * len(heights)
    return [torch.empty((batch_size, channels, h, w), dtype=grad.dtype, device=grad.device,
                        memory_format=_memory_format(cl)) for h, w, cl in zip(heights, widths, layouts)]


@torch.library.register_fake("resnest_cuda::nms")
def _nms_fake(boxes, scores, iou_threshold, max_keep=-1):
    torch.ops.resnest_cuda._nms_check(boxes, scores, max_keep, False, "nms")
    # How many boxes survive depends on their values: an unbacked size.
    num_kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((num_kept,), dtype=torch.long)


@torch.library.register_fake("resnest_cuda::_batched_nms_per_class")
def _batched_nms_per_class_fake(boxes, scores, idxs, iou_threshold, max_keep=-1):
    torch.ops.resnest_cuda._nms_check(boxes, scores, max_keep, False, "batched_nms", idxs)
    num_kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((num_kept,), dtype=torch.long)


@torch.library.register_fake("resnest_cuda::_batched_nms_per_class_fixed")
def _batched_nms_per_class_fixed_fake(boxes, scores, idxs, iou_threshold, max_keep):
    torch.ops.resnest_cuda._nms_check(boxes, scores, max_keep, True, "batched_nms_fixed", idxs)
    return boxes.new_empty((max_keep,), dtype=torch.long), boxes.new_empty((max_keep,), dtype=torch.bool)


@torch.library.register_fake("resnest_cuda::nms_fixed")
def _nms_fixed_fake(boxes, scores, iou_threshold, max_keep):
    torch.ops.resnest_cuda._nms_check(boxes, scores, max_keep, True, "nms_fixed")
    # The output size is an argument, not a property of the data: no unbacked sizes.
    return boxes.new_empty((max_keep,), dtype=torch.long), boxes.new_empty((max_keep,), dtype=torch.bool)


# --------------------------------------------------------------------------------------------------------------
# Autograd: the backward is itself a registered op, so torch.compile traces it like any other.


def _roi_align_setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = input.shape  # the values of input are not needed
    ctx.channels_last = _channels_last([input])
    ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def _roi_align_backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ctx.params
    batch_size, channels, height, width = ctx.input_shape
    # The kernels accumulate the gradient in the input's layout.
    grad_input = torch.ops.resnest_cuda.roi_align_backward(
        grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio,
        aligned, ctx.channels_last
    )
    return grad_input, None, None, None, None, None, None


def _roi_align_backward_setup_context(ctx, inputs, output):
    grad, rois, spatial_scale, pooled_height, pooled_width, _, _, _, _, sampling_ratio, aligned, _ = inputs
    ctx.save_for_backward(rois)
    ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def _roi_align_backward_backward(ctx, grad_grad_input):
    # roi_align_backward is linear in grad, and its adjoint is roi_align itself: double backward is exact.
    (rois,) = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ctx.params
    grad_grad = torch.ops.resnest_cuda.roi_align(
        grad_grad_input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
    )
    return (grad_grad, *([None] * 11))


torch.library.register_autograd("resnest_cuda::roi_align", _roi_align_backward, setup_context=_roi_align_setup_context)
torch.library.register_autograd(
    "resnest_cuda::roi_align_backward", _roi_align_backward_backward, setup_context=_roi_align_backward_setup_context
)


def _multi_level_setup_context(ctx, inputs, output):
    features, rois, spatial_scales, pooled_height, pooled_width, finest_scale, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.batch_channels = tuple(features[0].shape[:2])  # the values of the features are not needed
    ctx.heights = [f.shape[2] for f in features]
    ctx.widths = [f.shape[3] for f in features]
    ctx.params = (spatial_scales, pooled_height, pooled_width, finest_scale, sampling_ratio, aligned)
    ctx.channels_last = [_channels_last([f]) for f in features]


def _multi_level_backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    spatial_scales, pooled_height, pooled_width, finest_scale, sampling_ratio, aligned = ctx.params
    # The kernels accumulate each level's gradient in that level's layout.
    grads = torch.ops.resnest_cuda.multi_level_roi_align_backward(
        grad, rois, spatial_scales, pooled_height, pooled_width, *ctx.batch_channels, ctx.heights, ctx.widths,
        finest_scale, sampling_ratio, aligned, ctx.channels_last,
    )
    return grads, None, None, None, None, None, None, None


def _multi_level_backward_setup_context(ctx, inputs, output):
    grad, rois, spatial_scales, pooled_height, pooled_width, *_, finest_scale, sampling_ratio, aligned, _ = inputs
    ctx.save_for_backward(rois)
    ctx.params = (spatial_scales, pooled_height, pooled_width, finest_scale, sampling_ratio, aligned)


def _multi_level_backward_backward(ctx, grad_grads):
    # multi_level_roi_align_backward is linear in grad and its adjoint is the forward op: double backward is exact.
    (rois,) = ctx.saved_tensors
    spatial_scales, pooled_height, pooled_width, finest_scale, sampling_ratio, aligned = ctx.params
    grad_grad = torch.ops.resnest_cuda.multi_level_roi_align(
        [g.contiguous() for g in grad_grads], rois, spatial_scales, pooled_height, pooled_width, finest_scale,
        sampling_ratio, aligned,
    )
    return (grad_grad, *([None] * 12))


torch.library.register_autograd(
    "resnest_cuda::multi_level_roi_align", _multi_level_backward, setup_context=_multi_level_setup_context
)
torch.library.register_autograd(
    "resnest_cuda::multi_level_roi_align_backward", _multi_level_backward_backward,
    setup_context=_multi_level_backward_setup_context,
)
