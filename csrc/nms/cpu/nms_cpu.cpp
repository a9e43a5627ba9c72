// CPU NMS: stable sort by descending score, then the greedy pass with a suppressed flag per box: each kept box
// suppresses, in one branch-free vectorised sweep, the lower-scored boxes that overlap it above the threshold.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../nms.h"

namespace resnest_cuda {
namespace {

// Boxes in score order as separate coordinate arrays, so the inner loop over the remaining boxes is branch-free and
// vectorises. Its arithmetic is box_iou's, operation for operation, so the kept set is the same.
template <typename acc_t>
std::vector<int64_t> greedy_nms(const acc_t* boxes, const int64_t* order, int64_t n, acc_t threshold,
                                int64_t max_keep) {
  std::vector<acc_t> x1(n), y1(n), x2(n), y2(n), areas(n);
  for (int64_t i = 0; i < n; ++i) {
    const acc_t* b = boxes + order[i] * 4;
    x1[i] = b[0];
    y1[i] = b[1];
    x2[i] = b[2];
    y2[i] = b[3];
    areas[i] = box_area<acc_t>(b);
  }
  std::vector<uint8_t> suppressed(n, 0);
  std::vector<int64_t> keep;
  const acc_t* px1 = x1.data();
  const acc_t* py1 = y1.data();
  const acc_t* px2 = x2.data();
  const acc_t* py2 = y2.data();
  const acc_t* parea = areas.data();
  uint8_t* sup = suppressed.data();
  const size_t limit = max_keep < 0 ? static_cast<size_t>(n) : static_cast<size_t>(max_keep);
  for (int64_t i = 0; i < n; ++i) {
    if (sup[i]) continue;
    keep.push_back(order[i]);
    if (keep.size() == limit) break;  // the remaining boxes need no suppression sweep
    const acc_t ax1 = px1[i], ay1 = py1[i], ax2 = px2[i], ay2 = py2[i], area_a = parea[i];
    for (int64_t j = i + 1; j < n; ++j) {
      const acc_t left = ax1 > px1[j] ? ax1 : px1[j];
      const acc_t top = ay1 > py1[j] ? ay1 : py1[j];
      const acc_t right = ax2 < px2[j] ? ax2 : px2[j];
      const acc_t bottom = ay2 < py2[j] ? ay2 : py2[j];
      acc_t w = sub_rn(right, left);
      acc_t h = sub_rn(bottom, top);
      w = w > acc_t(0) ? w : acc_t(0);
      h = h > acc_t(0) ? h : acc_t(0);
      const acc_t inter = mul_rn(w, h);
      const acc_t iou = inter / sub_rn(add_rn(area_a, parea[j]), inter);
      sup[j] |= static_cast<uint8_t>(iou > threshold);
    }
  }
  return keep;
}

// Kept input indices in descending score order, at most max_keep of them (max_keep < 0: no limit).
std::vector<int64_t> kept_indices(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                  int64_t max_keep) {
  const int64_t n = boxes.size(0);
  if (n == 0 || max_keep == 0) return {};
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
  const at::Tensor b = boxes_in_acc_dtype(boxes);
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "nms_cpu", [&] {
    keep = greedy_nms<scalar_t>(b.const_data_ptr<scalar_t>(), order.const_data_ptr<int64_t>(), n,
                                static_cast<scalar_t>(iou_threshold), max_keep);
  });
  return keep;
}

}  // namespace

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, int64_t max_keep) {
  check_nms_input(boxes, scores, "nms");
  check_max_keep(max_keep, /*fixed=*/false, "nms");
  const std::vector<int64_t> keep = kept_indices(boxes, scores, iou_threshold, max_keep);
  at::Tensor out = at::empty({static_cast<int64_t>(keep.size())}, boxes.options().dtype(at::kLong));
  std::copy(keep.begin(), keep.end(), out.mutable_data_ptr<int64_t>());
  return out;
}

std::tuple<at::Tensor, at::Tensor> nms_fixed_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                 double iou_threshold, int64_t max_keep) {
  check_nms_input(boxes, scores, "nms_fixed");
  check_max_keep(max_keep, /*fixed=*/true, "nms_fixed");
  const std::vector<int64_t> keep = kept_indices(boxes, scores, iou_threshold, max_keep);
  at::Tensor out = at::zeros({max_keep}, boxes.options().dtype(at::kLong));
  at::Tensor valid = at::zeros({max_keep}, boxes.options().dtype(at::kBool));
  std::copy(keep.begin(), keep.end(), out.mutable_data_ptr<int64_t>());
  std::fill_n(valid.mutable_data_ptr<bool>(), keep.size(), true);
  return {out, valid};
}

TORCH_LIBRARY_IMPL(resnest_cuda, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("nms_fixed", &nms_fixed_cpu);
}

}  // namespace resnest_cuda
