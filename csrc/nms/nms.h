#pragma once
// Non-maximum suppression: shared input checks, the IoU used by the CPU and CUDA kernels, and declarations.
//
//   boxes   [N, 4]  (x1, y1, x2, y2), any floating dtype; area (x2 - x1) * (y2 - y1), no +1
//   scores  [N]     any floating dtype
//   keep    [M]     int64 indices of the kept boxes in descending score order (ties broken by the lower index)
//
// A box is suppressed when its IoU with a higher-scoring kept box is > iou_threshold. With max_keep >= 0 the sweep
// stops once max_keep boxes are kept: the result is the first max_keep entries of the full result.
//
// nms_fixed returns exactly max_keep entries, with no data-dependent shape:
//   keep    [max_keep]  int64, the kept indices first (as nms), then padding 0
//   valid   [max_keep]  bool, true for the kept entries
//
// Batched NMS (boxes of different categories never suppress each other) takes idxs [N], any integer dtype.
// _batched_nms_per_class and _batched_nms_per_class_fixed let a box suppress only boxes of its own category (the
// CPU compares it only with them; the CUDA mask sets no bit across categories). Their result is that of nms /
// nms_fixed over boxes moved apart by category (resnest_cuda/detection_ops.py, the other batched path) whenever
// those moved coordinates are exact and iou_threshold >= 0.
#include <ATen/ATen.h>

#include <tuple>

#ifndef RESNEST_HOST_DEVICE
#if defined(__CUDACC__)
#define RESNEST_HOST_DEVICE __host__ __device__
#else
#define RESNEST_HOST_DEVICE
#endif
#endif

namespace resnest_cuda {

// Arithmetic rounded after every operation, also on the GPU (where the compiler would otherwise fuse a*b+c into
// one FMA): the CPU and CUDA kernels and the PyTorch reference then compute bit-identical IoUs, and boxes exactly
// at the threshold are treated the same everywhere.
RESNEST_HOST_DEVICE inline float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
RESNEST_HOST_DEVICE inline float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
RESNEST_HOST_DEVICE inline float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
RESNEST_HOST_DEVICE inline double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
RESNEST_HOST_DEVICE inline double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
RESNEST_HOST_DEVICE inline double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

template <typename acc_t>
RESNEST_HOST_DEVICE inline acc_t box_area(const acc_t* b) {
  return mul_rn(sub_rn(b[2], b[0]), sub_rn(b[3], b[1]));
}

// IoU of two xyxy boxes given their areas; NaN (so never above a threshold) when both are empty.
template <typename acc_t>
RESNEST_HOST_DEVICE inline acc_t box_iou(const acc_t* a, acc_t area_a, const acc_t* b, acc_t area_b) {
  const acc_t left = a[0] > b[0] ? a[0] : b[0];
  const acc_t top = a[1] > b[1] ? a[1] : b[1];
  const acc_t right = a[2] < b[2] ? a[2] : b[2];
  const acc_t bottom = a[3] < b[3] ? a[3] : b[3];
  acc_t w = sub_rn(right, left);
  acc_t h = sub_rn(bottom, top);
  w = w > acc_t(0) ? w : acc_t(0);
  h = h > acc_t(0) ? h : acc_t(0);
  const acc_t inter = mul_rn(w, h);
  return inter / sub_rn(add_rn(area_a, area_b), inter);
}

// The one statement of NMS's argument rules: the CPU and CUDA kernels call these, and so does the `_nms_check` op
// (nms.cpp) through which the Python wrappers and the fake kernels apply them. ValueError for shapes, values and
// devices, TypeError for dtypes, each naming the argument.
inline bool is_nms_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

inline void check_nms_input(const at::Tensor& boxes, const at::Tensor& scores, const char* op) {
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.sym_size(1) == 4, op,
                    ": boxes must have shape [N, 4] (x1, y1, x2, y2), got shape ", boxes.sym_sizes());
  TORCH_CHECK_TYPE(is_nms_float(boxes.scalar_type()), op, ": boxes must be float32/float16/bfloat16/float64, got ",
                   boxes.scalar_type());
  TORCH_CHECK_VALUE(scores.dim() == 1 && scores.sym_size(0) == boxes.sym_size(0), op, ": scores must have shape [",
                    boxes.sym_size(0), "] (one per box), got shape ", scores.sym_sizes());
  TORCH_CHECK_TYPE(is_nms_float(scores.scalar_type()), op, ": scores must be float32/float16/bfloat16/float64, got ",
                   scores.scalar_type());
  TORCH_CHECK_VALUE(scores.device() == boxes.device(), op, ": scores is on ", scores.device(), " but boxes is on ",
                    boxes.device(), "; both must be on one device");
}

inline void check_nms_idxs(const at::Tensor& boxes, const at::Tensor& idxs, const char* op) {
  TORCH_CHECK_VALUE(idxs.dim() == 1 && idxs.sym_size(0) == boxes.sym_size(0), op, ": idxs must have shape [",
                    boxes.sym_size(0), "] (one per box), got shape ", idxs.sym_sizes());
  TORCH_CHECK_TYPE(at::isIntegralType(idxs.scalar_type(), /*includeBool=*/false), op,
                   ": idxs must be an integer tensor, got ", idxs.scalar_type());
  TORCH_CHECK_VALUE(idxs.device() == boxes.device(), op, ": idxs is on ", idxs.device(), " but boxes is on ",
                    boxes.device(), "; both must be on one device");
}

inline void check_max_keep(int64_t max_keep, bool fixed, const char* op) {
  TORCH_CHECK_VALUE(fixed ? max_keep >= 0 : max_keep >= -1, op, ": max_keep must be >= 0",
                    fixed ? "" : " (or -1 for no limit)", ", got ", max_keep);
}

// Box coordinates in the dtype the IoU is computed in: fp32 (fp64 for fp64 boxes), contiguous.
inline at::Tensor boxes_in_acc_dtype(const at::Tensor& boxes) {
  return boxes.to(boxes.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, int64_t max_keep);
std::tuple<at::Tensor, at::Tensor> nms_fixed_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                 double iou_threshold, int64_t max_keep);
at::Tensor batched_nms_per_class_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                                     double iou_threshold, int64_t max_keep);
std::tuple<at::Tensor, at::Tensor> batched_nms_fixed_per_class_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                                   const at::Tensor& idxs, double iou_threshold,
                                                                   int64_t max_keep);

}  // namespace resnest_cuda
