"""ONNX translations of the resnest_cuda detection ops, for `torch.onnx.export(..., dynamo=True)`.

Needs onnxscript (requirements-dev.txt); imported only when exporting to ONNX.

- `resnest_cuda::roi_align(input, rois [K, 5], ...)` -> RoiAlign(input, rois[:, 1:], int64(rois[:, 0])), mode avg,
  coordinate_transformation_mode "half_pixel" for aligned=True (pixel centres shifted by -0.5) and
  "output_half_pixel" (the legacy mode) for aligned=False; sampling_ratio <= 0 is ONNX's adaptive 0. A RoI with a
  non-finite coordinate or a batch index outside the batch pools to 0, as in the op (onnxruntime would refuse it).
- `resnest_cuda::multi_level_roi_align(features, rois, scales, ...)` -> each RoI's level by mmdetection's rule
  (floor(log2(sqrt(area) / finest_scale + 1e-6)) clamped to the levels, NaN sizes to level 0), then one RoiAlign
  per level over all RoIs and a Where per level that keeps each RoI's own level: standard ops and no
  data-dependent shapes, at the cost of pooling every RoI on every level. log2 is Log / ln 2 here where the op
  takes the exact binary exponent, so a RoI within rounding of a level boundary may change level.
- `resnest_cuda::nms(boxes [N, 4], scores [N], iou, max_keep)` -> NonMaxSuppression on one batch and one class with
  no score threshold: it suppresses IoU > iou and returns the kept boxes by descending score, like the op, at most
  max_keep of them (max_keep -1: all); column 2 of its [K, 3] output is the box index.
- `resnest_cuda::nms_fixed(boxes, scores, iou, max_keep)` -> the same NonMaxSuppression, its indices padded with 0
  to max_keep, and `valid` = position < number kept.
"""

import math

import onnx_ir as ir
import torch
from onnxscript import opset18 as op


def _valid_rois(input, rois):
    """[K, 1] bool: the RoI's coordinates are finite and its batch index is in [0, N). onnxruntime's RoiAlign
    refuses other RoIs; the op pools them to 0, and so does the translation (they are replaced by a valid dummy
    RoI, and their output by 0)."""
    finite = op.Not(op.Or(op.IsNaN(rois), op.IsInf(rois)))
    finite = op.Cast(op.ReduceMin(op.Cast(finite, to=ir.DataType.INT64), [1], keepdims=1), to=ir.DataType.BOOL)
    index = op.Slice(rois, [0], [1], [1])
    batch = op.CastLike(op.Slice(op.Shape(input), [0], [1], [0]), rois)
    in_range = op.And(op.GreaterOrEqual(index, op.CastLike(0.0, rois)), op.Less(index, batch))
    return op.And(finite, in_range)


def roi_align(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int,
              aligned: bool):
    valid = _valid_rois(input, rois)
    rois = op.Where(valid, rois, op.CastLike([0.0, 0.0, 0.0, 1.0, 1.0], rois))
    batch_indices = op.Cast(op.Reshape(op.Slice(rois, [0], [1], [1]), [-1]), to=ir.DataType.INT64)
    boxes = op.Slice(rois, [1], [5], [1])
    pooled = op.RoiAlign(
        input, boxes, batch_indices,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        mode="avg", output_height=pooled_height, output_width=pooled_width,
        sampling_ratio=max(int(sampling_ratio), 0), spatial_scale=float(spatial_scale),
    )
    return op.Where(op.Reshape(valid, [-1, 1, 1, 1]), pooled, op.CastLike(0.0, pooled))


def multi_level_roi_align(features, rois, spatial_scales, pooled_height: int, pooled_width: int,
                          finest_scale: float, sampling_ratio: int, aligned: bool):
    x1, y1 = op.Slice(rois, [1], [2], [1]), op.Slice(rois, [2], [3], [1])
    x2, y2 = op.Slice(rois, [3], [4], [1]), op.Slice(rois, [4], [5], [1])
    scale = op.Div(op.Sqrt(op.Mul(op.Sub(x2, x1), op.Sub(y2, y1))), op.CastLike(float(finest_scale), rois))
    log2 = op.Div(op.Log(op.Add(scale, op.CastLike(1e-6, rois))), op.CastLike(math.log(2.0), rois))
    level = op.Floor(log2)
    level = op.Where(op.IsNaN(level), op.CastLike(0.0, rois), level)  # an empty or NaN-sized RoI goes to level 0
    level = op.Clip(level, op.CastLike(0.0, rois), op.CastLike(float(len(features) - 1), rois))
    level = op.Reshape(level, [-1, 1, 1, 1])
    out = None
    for index, (feature, scale_l) in enumerate(zip(features, spatial_scales)):
        pooled = roi_align(feature, rois, scale_l, pooled_height, pooled_width, sampling_ratio, aligned)
        if out is None:
            out = pooled  # level 0, replaced below wherever a RoI belongs to a coarser level
        else:
            out = op.Where(op.Equal(level, op.CastLike(float(index), rois)), pooled, out)
    return out


def nms(boxes, scores, iou_threshold: float, max_keep: int = -1):
    # every box may be kept, or at most max_keep
    max_per_class = op.Shape(scores) if max_keep < 0 else op.Constant(value_ints=[int(max_keep)])
    selected = op.NonMaxSuppression(
        op.Unsqueeze(boxes, [0]), op.Unsqueeze(scores, [0, 1]), max_per_class,
        op.Constant(value_float=float(iou_threshold)),
    )
    return op.Reshape(op.Slice(selected, [2], [3], [1]), [-1])


def nms_fixed(boxes, scores, iou_threshold: float, max_keep: int):
    kept = nms(boxes, scores, iou_threshold, max_keep)  # at most max_keep, by descending score
    count = op.Shape(kept)
    padding = op.Concat(op.Constant(value_ints=[0]), op.Sub(op.Constant(value_ints=[int(max_keep)]), count), axis=0)
    keep = op.Pad(kept, padding, op.Constant(value_int=0))
    valid = op.Less(op.Range(op.Constant(value_int=0), op.Constant(value_int=int(max_keep)), op.Constant(value_int=1)),
                    count)
    return keep, valid


def translation_table() -> dict:
    return {
        torch.ops.resnest_cuda.roi_align.default: roi_align,
        torch.ops.resnest_cuda.multi_level_roi_align.default: multi_level_roi_align,
        torch.ops.resnest_cuda.nms.default: nms,
        torch.ops.resnest_cuda.nms_fixed.default: nms_fixed,
    }
