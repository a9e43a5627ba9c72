// CPU NMS: stable sort by descending score, then the greedy pass with a suppressed flag per box: each kept box
// suppresses, in one branch-free vectorised sweep, the lower-scored boxes that overlap it above the threshold.
// Batched NMS per category: the same pass over each category's boxes, sorted by (category, descending score) so
// that every category is one contiguous segment; the kept boxes are then merged back into the score order.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../nms.h"

namespace resnest_cuda {
namespace {

// Boxes in a visiting order as separate coordinate arrays, so the inner loop over the remaining boxes is
// branch-free and vectorises.
template <typename acc_t>
struct BoxColumns {
  std::vector<acc_t> x1, y1, x2, y2, area;

  BoxColumns(const acc_t* boxes, const int64_t* order, int64_t n) : x1(n), y1(n), x2(n), y2(n), area(n) {
    for (int64_t i = 0; i < n; ++i) {
      const acc_t* b = boxes + order[i] * 4;
      x1[i] = b[0];
      y1[i] = b[1];
      x2[i] = b[2];
      y2[i] = b[3];
      area[i] = box_area<acc_t>(b);
    }
  }
};

// The greedy pass over positions [begin, end) of `cols`, which hold boxes in descending score order: appends the
// positions of the kept boxes to `keep`, at most max_keep of them (max_keep < 0: no limit). `sup` holds a
// suppressed flag per position, 0 on entry for [begin, end). Its arithmetic is box_iou's, operation for operation,
// so the kept set is the same as the CUDA kernel's.
template <typename acc_t>
void greedy_sweep(const BoxColumns<acc_t>& cols, int64_t begin, int64_t end, acc_t threshold, int64_t max_keep,
                  uint8_t* sup, std::vector<int64_t>& keep) {
  const acc_t* px1 = cols.x1.data();
  const acc_t* py1 = cols.y1.data();
  const acc_t* px2 = cols.x2.data();
  const acc_t* py2 = cols.y2.data();
  const acc_t* parea = cols.area.data();
  int64_t kept = 0;
  for (int64_t i = begin; i < end; ++i) {
    if (sup[i]) continue;
    keep.push_back(i);
    if (++kept == max_keep) break;  // the remaining boxes need no suppression sweep
    const acc_t ax1 = px1[i], ay1 = py1[i], ax2 = px2[i], ay2 = py2[i], area_a = parea[i];
    for (int64_t j = i + 1; j < end; ++j) {
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
}

// Rank of each box in descending score order (ties: the lower index first) -> box index.
at::Tensor score_order(const at::Tensor& scores) {
  return std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
}

// Positions of the kept boxes when the boxes are visited in `visit` order and each segment of equal `segment` keys
// (sorted, one per position; null: a single segment) is swept on its own, at most max_keep per segment.
std::vector<int64_t> kept_positions(const at::Tensor& boxes, const int64_t* visit, const int64_t* segment,
                                    double iou_threshold, int64_t max_keep) {
  const int64_t n = boxes.size(0);
  const at::Tensor b = boxes_in_acc_dtype(boxes);
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "nms_cpu", [&] {
    const BoxColumns<scalar_t> cols(b.const_data_ptr<scalar_t>(), visit, n);
    std::vector<uint8_t> suppressed(n, 0);
    for (int64_t begin = 0, end; begin < n; begin = end) {
      end = segment == nullptr ? n : begin + 1;
      while (end < n && segment[end] == segment[begin]) ++end;
      greedy_sweep<scalar_t>(cols, begin, end, static_cast<scalar_t>(iou_threshold), max_keep, suppressed.data(),
                             keep);
    }
  });
  return keep;
}

// Kept input indices in descending score order, at most max_keep of them (max_keep < 0: no limit).
std::vector<int64_t> kept_indices(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                  int64_t max_keep) {
  if (boxes.size(0) == 0 || max_keep == 0) return {};
  const at::Tensor order = score_order(scores);
  const int64_t* rank_to_box = order.const_data_ptr<int64_t>();
  std::vector<int64_t> keep = kept_positions(boxes, rank_to_box, nullptr, iou_threshold, max_keep);
  for (int64_t& k : keep) k = rank_to_box[k];
  return keep;
}

// kept_indices of batched NMS, one category at a time. The score order, stably sorted by category, visits each
// category's boxes in score order (ties: lower index first) as one segment. A category cannot suppress another, so
// its kept boxes are those of one NMS over all boxes moved apart by category; merged by score rank, they are in
// that NMS's order, and the first max_keep of them hold at most max_keep of any one category.
std::vector<int64_t> per_class_kept_indices(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                                            double iou_threshold, int64_t max_keep) {
  if (boxes.size(0) == 0 || max_keep == 0) return {};
  const at::Tensor order = score_order(scores);
  const auto [category, by_category] =
      idxs.to(at::kLong).index_select(0, order).sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor position_to_rank = by_category.contiguous();
  const at::Tensor position_to_box = order.index_select(0, position_to_rank);
  const int64_t* rank = position_to_rank.const_data_ptr<int64_t>();
  std::vector<int64_t> keep = kept_positions(boxes, position_to_box.const_data_ptr<int64_t>(),
                                             category.contiguous().const_data_ptr<int64_t>(), iou_threshold, max_keep);
  for (int64_t& k : keep) k = rank[k];
  std::sort(keep.begin(), keep.end());
  if (max_keep >= 0 && static_cast<int64_t>(keep.size()) > max_keep) keep.resize(max_keep);
  const int64_t* rank_to_box = order.const_data_ptr<int64_t>();
  for (int64_t& k : keep) k = rank_to_box[k];
  return keep;
}

at::Tensor index_tensor(const std::vector<int64_t>& keep, const at::Tensor& like) {
  at::Tensor out = at::empty({static_cast<int64_t>(keep.size())}, like.options().dtype(at::kLong));
  std::copy(keep.begin(), keep.end(), out.mutable_data_ptr<int64_t>());
  return out;
}

}  // namespace

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, int64_t max_keep) {
  check_nms_input(boxes, scores, "nms");
  check_max_keep(max_keep, /*fixed=*/false, "nms");
  return index_tensor(kept_indices(boxes, scores, iou_threshold, max_keep), boxes);
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

at::Tensor batched_nms_per_class_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                                     double iou_threshold, int64_t max_keep) {
  check_nms_input(boxes, scores, "batched_nms");
  check_nms_idxs(boxes, idxs, "batched_nms");
  check_max_keep(max_keep, /*fixed=*/false, "batched_nms");
  return index_tensor(per_class_kept_indices(boxes, scores, idxs, iou_threshold, max_keep), boxes);
}

TORCH_LIBRARY_IMPL(resnest_cuda, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("nms_fixed", &nms_fixed_cpu);
  m.impl("_batched_nms_per_class", &batched_nms_per_class_cpu);
}

}  // namespace resnest_cuda
