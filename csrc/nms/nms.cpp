// Schema of the NMS op. The fake (meta) kernel is registered in Python (resnest_cuda/detection_ops.py); the CPU
// and CUDA kernels register themselves in cpu/ and cuda/.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(resnest_cuda, m) {
  // Returns the int64 indices of the kept boxes in descending score order; its length depends on the data.
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
}
