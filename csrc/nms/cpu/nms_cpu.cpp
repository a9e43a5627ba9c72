// CPU NMS: stable sort by descending score, then the greedy pass with a suppressed flag per box: each kept box
// suppresses, in one branch-free vectorised sweep, the lower-scored boxes that overlap it above the threshold.
// Batched NMS per category: the boxes laid out by (category, descending score), so that every category is one
// contiguous segment, and the same pass in score order, each kept box compared only with its own segment.
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

// The greedy pass: visits the boxes of `cols` in score order, rank r at position position_of_rank[r] (null: at
// position r), and returns the ranks of the kept boxes, at most max_keep of them (max_keep < 0: no limit). A kept
// box at position p suppresses the boxes at positions (p, segment_end[p]) (null: up to n) that overlap it above the
// threshold: the later boxes in score order of its segment (with one segment, all the later boxes), which are the
// only ones it may suppress. Its arithmetic is box_iou's, operation for operation, so the kept set is the same as
// the CUDA kernel's.
template <typename acc_t>
std::vector<int64_t> greedy_nms(const BoxColumns<acc_t>& cols, const int64_t* position_of_rank,
                                const int64_t* segment_end, acc_t threshold, int64_t max_keep) {
  const int64_t n = static_cast<int64_t>(cols.x1.size());
  const acc_t* px1 = cols.x1.data();
  const acc_t* py1 = cols.y1.data();
  const acc_t* px2 = cols.x2.data();
  const acc_t* py2 = cols.y2.data();
  const acc_t* parea = cols.area.data();
  std::vector<uint8_t> suppressed(n, 0);
  uint8_t* sup = suppressed.data();
  std::vector<int64_t> keep;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t i = position_of_rank == nullptr ? r : position_of_rank[r];
    if (sup[i]) continue;
    keep.push_back(r);
    if (static_cast<int64_t>(keep.size()) == max_keep) break;  // the remaining boxes need no suppression sweep
    const int64_t end = segment_end == nullptr ? n : segment_end[i];
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
  return keep;
}

// Rank of each box in descending score order (ties: the lower index first) -> box index.
at::Tensor score_order(const at::Tensor& scores) {
  return std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
}

// greedy_nms over the boxes laid out by `position_to_box`, the kept ranks mapped to box indices by `order`.
std::vector<int64_t> kept_boxes(const at::Tensor& boxes, const at::Tensor& order, const int64_t* position_to_box,
                                const int64_t* position_of_rank, const int64_t* segment_end, double iou_threshold,
                                int64_t max_keep) {
  const at::Tensor b = boxes_in_acc_dtype(boxes);
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "nms_cpu", [&] {
    const BoxColumns<scalar_t> cols(b.const_data_ptr<scalar_t>(), position_to_box, boxes.size(0));
    keep = greedy_nms<scalar_t>(cols, position_of_rank, segment_end, static_cast<scalar_t>(iou_threshold), max_keep);
  });
  const int64_t* rank_to_box = order.const_data_ptr<int64_t>();
  for (int64_t& k : keep) k = rank_to_box[k];
  return keep;
}

// Kept input indices in descending score order, at most max_keep of them (max_keep < 0: no limit).
std::vector<int64_t> kept_indices(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                  int64_t max_keep) {
  if (boxes.size(0) == 0 || max_keep == 0) return {};
  const at::Tensor order = score_order(scores);
  return kept_boxes(boxes, order, order.const_data_ptr<int64_t>(), nullptr, nullptr, iou_threshold, max_keep);
}

// kept_indices of batched NMS. The boxes are laid out by (category, descending score) -- the score order, stably
// sorted by category -- so that each category is one contiguous segment, and visited in score order as by one NMS
// over all boxes: a kept box is compared only with the later boxes of its own segment. Same kept boxes, in the
// same order and with the same max_keep stop, as one NMS over boxes moved apart by category, at a cost that grows
// with the squared size of each category instead of the squared total.
std::vector<int64_t> per_class_kept_indices(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                                            double iou_threshold, int64_t max_keep) {
  const int64_t n = boxes.size(0);
  if (n == 0 || max_keep == 0) return {};
  const at::Tensor order = score_order(scores);
  const auto [sorted_category, by_category] =
      idxs.to(at::kLong).index_select(0, order).sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor category = sorted_category.contiguous();       // position -> category
  const at::Tensor position_to_rank = by_category.contiguous();  // position -> rank
  const at::Tensor position_to_box = order.index_select(0, position_to_rank);
  const int64_t* cat = category.const_data_ptr<int64_t>();
  const int64_t* rank = position_to_rank.const_data_ptr<int64_t>();
  std::vector<int64_t> position_of_rank(n), segment_end(n);
  for (int64_t p = 0; p < n; ++p) position_of_rank[rank[p]] = p;
  for (int64_t p = n - 1; p >= 0; --p) {
    segment_end[p] = p + 1 < n && cat[p + 1] == cat[p] ? segment_end[p + 1] : p + 1;
  }
  return kept_boxes(boxes, order, position_to_box.const_data_ptr<int64_t>(), position_of_rank.data(),
                    segment_end.data(), iou_threshold, max_keep);
}

at::Tensor index_tensor(const std::vector<int64_t>& keep, const at::Tensor& like) {
  at::Tensor out = at::empty({static_cast<int64_t>(keep.size())}, like.options().dtype(at::kLong));
  std::copy(keep.begin(), keep.end(), out.mutable_data_ptr<int64_t>());
  return out;
}

// The fixed-size form of at most max_keep kept indices: (keep [max_keep] padded with 0, valid [max_keep]).
std::tuple<at::Tensor, at::Tensor> fixed_tensors(const std::vector<int64_t>& keep, int64_t max_keep,
                                                 const at::Tensor& like) {
  at::Tensor out = at::zeros({max_keep}, like.options().dtype(at::kLong));
  at::Tensor valid = at::zeros({max_keep}, like.options().dtype(at::kBool));
  std::copy(keep.begin(), keep.end(), out.mutable_data_ptr<int64_t>());
  std::fill_n(valid.mutable_data_ptr<bool>(), keep.size(), true);
  return {out, valid};
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
  return fixed_tensors(kept_indices(boxes, scores, iou_threshold, max_keep), max_keep, boxes);
}

at::Tensor batched_nms_per_class_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                                     double iou_threshold, int64_t max_keep) {
  check_nms_input(boxes, scores, "batched_nms");
  check_nms_idxs(boxes, idxs, "batched_nms");
  check_max_keep(max_keep, /*fixed=*/false, "batched_nms");
  return index_tensor(per_class_kept_indices(boxes, scores, idxs, iou_threshold, max_keep), boxes);
}

std::tuple<at::Tensor, at::Tensor> batched_nms_fixed_per_class_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                                   const at::Tensor& idxs, double iou_threshold,
                                                                   int64_t max_keep) {
  check_nms_input(boxes, scores, "batched_nms_fixed");
  check_nms_idxs(boxes, idxs, "batched_nms_fixed");
  check_max_keep(max_keep, /*fixed=*/true, "batched_nms_fixed");
  return fixed_tensors(per_class_kept_indices(boxes, scores, idxs, iou_threshold, max_keep), max_keep, boxes);
}

TORCH_LIBRARY_IMPL(resnest_cuda, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("nms_fixed", &nms_fixed_cpu);
  m.impl("_batched_nms_per_class", &batched_nms_per_class_cpu);
  m.impl("_batched_nms_per_class_fixed", &batched_nms_fixed_per_class_cpu);
}

}  // namespace resnest_cuda
