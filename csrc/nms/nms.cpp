// Schema of the NMS op. The fake (meta) kernel is registered in Python (resnest_cuda/detection_ops.py); the CPU
// and CUDA kernels register themselves in cpu/ and cuda/.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(resnest_cuda, m) {
  // Returns the int64 indices of the kept boxes in descending score order; its length depends on the data.
  // max_keep >= 0 stops the sweep once that many boxes are kept (-1: no limit).
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold, int max_keep=-1) -> Tensor");
  // Exactly max_keep entries: (keep int64 [max_keep], padded with 0; valid bool [max_keep]).
  m.def("nms_fixed(Tensor boxes, Tensor scores, float iou_threshold, int max_keep) -> (Tensor, Tensor)");
}
