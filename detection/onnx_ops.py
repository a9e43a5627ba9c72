"""ONNX translations of the resnest_cuda detection ops, for `torch.onnx.export(..., dynamo=True)`.

Needs onnxscript (requirements-dev.txt); imported only when exporting to ONNX.

- `resnest_cuda::roi_align(input, rois [K, 5], ...)` -> RoiAlign(input, rois[:, 1:], int64(rois[:, 0])), mode avg,
  coordinate_transformation_mode "half_pixel" for aligned=True (pixel centres shifted by -0.5) and
  "output_half_pixel" (the legacy mode) for aligned=False; sampling_ratio <= 0 is ONNX's adaptive 0.
- `resnest_cuda::nms(boxes [N, 4], scores [N], iou)` -> NonMaxSuppression on one batch and one class with no
  score threshold and no output limit: it suppresses IoU > iou and returns the kept boxes by descending score,
  like the op; column 2 of its [K, 3] output is the box index.
"""

import onnx_ir as ir
import torch
from onnxscript import opset18 as op


def roi_align(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int,
              aligned: bool):
    batch_indices = op.Cast(op.Reshape(op.Slice(rois, [0], [1], [1]), [-1]), to=ir.DataType.INT64)
    boxes = op.Slice(rois, [1], [5], [1])
    return op.RoiAlign(
        input, boxes, batch_indices,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        mode="avg", output_height=pooled_height, output_width=pooled_width,
        sampling_ratio=max(int(sampling_ratio), 0), spatial_scale=float(spatial_scale),
    )


def nms(boxes, scores, iou_threshold: float):
    max_per_class = op.Shape(scores)  # every box may be kept
    selected = op.NonMaxSuppression(
        op.Unsqueeze(boxes, [0]), op.Unsqueeze(scores, [0, 1]), max_per_class,
        op.Constant(value_float=float(iou_threshold)),
    )
    return op.Reshape(op.Slice(selected, [2], [3], [1]), [-1])


def translation_table() -> dict:
    return {torch.ops.resnest_cuda.roi_align.default: roi_align, torch.ops.resnest_cuda.nms.default: nms}
