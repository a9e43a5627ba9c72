// Schemas of the RoIAlign ops. Autograd and fake (meta) kernels are registered in Python
// (resnest_cuda/detection_ops.py); the CPU and CUDA kernels register themselves in cpu/ and cuda/.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(resnest_cuda, m) {
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width,"
      " int sampling_ratio, bool aligned) -> Tensor");
  // The gradient w.r.t. input only; batch_size/channels/height/width give the input's shape.
  m.def(
      "roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width,"
      " SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, bool aligned)"
      " -> Tensor");
}
