// CPU NMS: stable sort by descending score, then the greedy pass with a suppressed flag per box. The pass stops
// as soon as every box is either kept or suppressed.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../nms.h"

namespace resnest_cuda {
namespace {

template <typename acc_t>
std::vector<int64_t> greedy_nms(const acc_t* boxes, const int64_t* order, int64_t n, acc_t threshold) {
  std::vector<acc_t> sorted(n * 4), areas(n);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < 4; ++j) sorted[i * 4 + j] = boxes[order[i] * 4 + j];
    areas[i] = box_area<acc_t>(&sorted[i * 4]);
  }
  std::vector<uint8_t> suppressed(n, 0);
  std::vector<int64_t> keep;
  int64_t undecided = n;
  for (int64_t i = 0; i < n && undecided > 0; ++i) {
    if (suppressed[i]) continue;
    keep.push_back(order[i]);
    --undecided;
    const acc_t* a = &sorted[i * 4];
    for (int64_t j = i + 1; j < n; ++j) {
      if (suppressed[j]) continue;
      if (box_iou<acc_t>(a, areas[i], &sorted[j * 4], areas[j]) > threshold) {
        suppressed[j] = 1;
        --undecided;
      }
    }
  }
  return keep;
}

}  // namespace

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_input(boxes, scores, "nms");
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
  const at::Tensor b = boxes_in_acc_dtype(boxes);
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "nms_cpu", [&] {
    keep = greedy_nms<scalar_t>(b.const_data_ptr<scalar_t>(), order.const_data_ptr<int64_t>(), n,
                                static_cast<scalar_t>(iou_threshold));
  });
  at::Tensor out = at::empty({static_cast<int64_t>(keep.size())}, boxes.options().dtype(at::kLong));
  std::copy(keep.begin(), keep.end(), out.mutable_data_ptr<int64_t>());
  return out;
}

TORCH_LIBRARY_IMPL(resnest_cuda, CPU, m) { m.impl("nms", &nms_cpu); }

}  // namespace resnest_cuda
