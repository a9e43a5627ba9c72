// Schemas of the multi-level RoIAlign ops (see roi_align.h). Autograd and fake (meta) kernels are registered in
// Python (resnest_cuda/detection_ops.py); the CPU and CUDA kernels register themselves in cpu/ and cuda/.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(resnest_cuda, m) {
  // Each ROI is pooled from features[level], level picked from its size; spatial_scales[l] = 1 / stride of level l.
  m.def(
      "multi_level_roi_align(Tensor[] features, Tensor rois, float[] spatial_scales, SymInt pooled_height,"
      " SymInt pooled_width, float finest_scale, int sampling_ratio, bool aligned) -> Tensor");
  // The gradients w.r.t. every level; batch_size, channels, heights[l], widths[l] give the levels' shapes. Level l's
  // gradient is channels_last when channels_last[l] is set, else contiguous (an empty list: every level contiguous).
  m.def(
      "multi_level_roi_align_backward(Tensor grad, Tensor rois, float[] spatial_scales, SymInt pooled_height,"
      " SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt[] heights, SymInt[] widths,"
      " float finest_scale, int sampling_ratio, bool aligned, bool[] channels_last=[]) -> Tensor[]");
}
