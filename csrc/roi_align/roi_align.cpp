// Schemas of the RoIAlign ops and their Meta kernels. Autograd is registered in Python
// (resnest_cuda/detection_ops.py); the CPU and CUDA kernels register themselves in cpu/ and cuda/.
//
// The Meta kernels are what fake tensors (torch.compile, torch.export, opcheck) run: they apply the same argument
// checks as the CPU and CUDA kernels (roi_align.h), so a bad argument raises the same error on every path.
#include <torch/library.h>

#include "roi_align.h"

namespace resnest_cuda {
namespace {

at::Tensor roi_align_meta(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                          c10::SymInt pooled_height, c10::SymInt pooled_width, int64_t sampling_ratio, bool aligned) {
  const RoiAlignParams p{spatial_scale, pooled_height.guard_int(__FILE__, __LINE__),
                         pooled_width.guard_int(__FILE__, __LINE__), sampling_ratio, aligned};
  check_roi_align_input(input, rois, p, "roi_align");
  return at::empty_symint({rois.sym_size(0), input.sym_size(1), pooled_height, pooled_width}, input.options(),
                          memory_format_of(pools_channels_last({input})));
}

at::Tensor roi_align_backward_meta(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   c10::SymInt pooled_height, c10::SymInt pooled_width, c10::SymInt batch_size,
                                   c10::SymInt channels, c10::SymInt height, c10::SymInt width,
                                   int64_t sampling_ratio, bool aligned, bool channels_last) {
  const RoiAlignParams p{spatial_scale, pooled_height.guard_int(__FILE__, __LINE__),
                         pooled_width.guard_int(__FILE__, __LINE__), sampling_ratio, aligned};
  check_roi_align_backward_input(grad, rois, p, batch_size, channels, height, width);
  return at::empty_symint({batch_size, channels, height, width}, grad.options(), memory_format_of(channels_last));
}

}  // namespace
}  // namespace resnest_cuda

TORCH_LIBRARY_FRAGMENT(resnest_cuda, m) {
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width,"
      " int sampling_ratio, bool aligned) -> Tensor");
  // The gradient w.r.t. input only; batch_size/channels/height/width give the input's shape. The result is
  // channels_last when channels_last is set (the autograd formula sets it for a channels_last input), else
  // contiguous NCHW: the kernels accumulate it in that layout.
  m.def(
      "roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width,"
      " SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, bool aligned,"
      " bool channels_last=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(resnest_cuda, Meta, m) {
  m.impl("roi_align", &resnest_cuda::roi_align_meta);
  m.impl("roi_align_backward", &resnest_cuda::roi_align_backward_meta);
}
