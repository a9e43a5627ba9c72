// Schemas of the NMS ops and of `_nms_check`. The fake kernels are registered in Python
// (resnest_cuda/detection_ops.py: the length of nms's result depends on the data) and apply the argument rules
// through `_nms_check`; the CPU and CUDA kernels register themselves in cpu/ and cuda/.
#include <torch/library.h>

#include <optional>
#include <string>

#include "nms.h"

namespace resnest_cuda {
namespace {

// NMS's argument rules (nms.h) for callers that are not a kernel: the Python wrappers of the batched variants
// (before they offset the boxes by category; with their idxs), and the fake kernels. Registered for every
// backend, Meta included.
void nms_check(const at::Tensor& boxes, const at::Tensor& scores, int64_t max_keep, bool fixed,
               c10::string_view op, const std::optional<at::Tensor>& idxs) {
  const std::string name(op);
  check_nms_input(boxes, scores, name.c_str());
  if (idxs.has_value()) check_nms_idxs(boxes, *idxs, name.c_str());
  check_max_keep(max_keep, fixed, name.c_str());
}

}  // namespace
}  // namespace resnest_cuda

TORCH_LIBRARY_FRAGMENT(resnest_cuda, m) {
  // Returns the int64 indices of the kept boxes in descending score order; its length depends on the data.
  // max_keep >= 0 stops the sweep once that many boxes are kept (-1: no limit).
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold, int max_keep=-1) -> Tensor");
  // Exactly max_keep entries: (keep int64 [max_keep], padded with 0; valid bool [max_keep]).
  m.def("nms_fixed(Tensor boxes, Tensor scores, float iou_threshold, int max_keep) -> (Tensor, Tensor)");
  // Batched NMS (idxs: the category of each box): a box suppresses only boxes of its own category.
  // batched_nms / batched_nms_fixed call them (outside torch.export).
  m.def("_batched_nms_per_class(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold, int max_keep=-1) "
        "-> Tensor");
  m.def("_batched_nms_per_class_fixed(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold, int max_keep) "
        "-> (Tensor, Tensor)");
  // Raises the error of a bad argument (as `op`; idxs: a batched variant's categories), returns nothing otherwise.
  m.def("_nms_check(Tensor boxes, Tensor scores, int max_keep, bool fixed, str op, Tensor? idxs=None) -> ()");
}

TORCH_LIBRARY_IMPL(resnest_cuda, CompositeExplicitAutograd, m) {
  m.impl("_nms_check", &resnest_cuda::nms_check);
}
