// CUDA NMS with a bitmask of 64-box tiles.
//
// 1. Stable sort by descending score; boxes gathered in that order, in fp32 (fp64 for fp64 boxes).
// 2. mask_kernel: block (row tile, column tile) of 64 threads; thread i sets bit j of mask[i][column tile] when box
//    j (later in score order than i) has IoU > threshold with box i and, for batched NMS, the same category.
//    Only tiles on or above the diagonal are computed (and read).
// 3. keep_kernel: one block walks the tiles in score order with the running "removed" bits in shared memory (one
//    word per tile). Per tile it stages the tile's diagonal mask words in shared memory, decides the tile's boxes
//    from them (a box is kept unless a kept box already set its bit), then ORs the rows of the tile's kept boxes
//    into the words of the later tiles with all its threads. It stops once max_keep boxes are kept (max_keep < 0:
//    no limit) and writes either a kept flag per sorted box (nms) or the kept input indices padded to max_keep
//    with a validity mask (nms_fixed, no host round trip).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "../../cuda_support.cuh"
#include "../nms.h"

namespace resnest_cuda {
namespace {

constexpr int kTile = 64;  // boxes per tile = threads per block = bits per mask word
constexpr int kKeepThreads = 256;  // >= kTile: the first kTile threads stage a tile's diagonal words
static_assert(kKeepThreads >= kTile, "keep_kernel stages a tile with one thread per box");
// keep_kernel's shared memory: kMaxTiles "removed" words (dynamic) and the kTile diagonal words of one tile fit the
// default 48 KiB.
constexpr int64_t kMaxTiles = (48 * 1024 - kTile * 8) / 8;

// `categories` (batched NMS: the category of each sorted box; null for plain NMS): a box only suppresses boxes of
// its own category.
template <typename acc_t>
__global__ void mask_kernel(const acc_t* __restrict__ boxes, const int64_t* __restrict__ categories, int64_t n,
                            int64_t tiles, acc_t threshold, unsigned long long* __restrict__ mask) {
  const int64_t row_tile = blockIdx.y, col_tile = blockIdx.x;
  if (row_tile > col_tile) return;  // box j only matters to boxes i < j
  const int row_size = static_cast<int>(min(n - row_tile * kTile, static_cast<int64_t>(kTile)));
  const int col_size = static_cast<int>(min(n - col_tile * kTile, static_cast<int64_t>(kTile)));

  RESNEST_SHARED(acc_t, col_boxes, kTile * 4);
  RESNEST_SHARED(acc_t, col_areas, kTile);
  RESNEST_SHARED(int64_t, col_categories, kTile);
  if (threadIdx.x < col_size) {
    const int64_t j = col_tile * kTile + threadIdx.x;
    const acc_t* b = boxes + j * 4;
    for (int d = 0; d < 4; ++d) col_boxes[threadIdx.x * 4 + d] = b[d];
    col_areas[threadIdx.x] = box_area<acc_t>(b);
    col_categories[threadIdx.x] = categories == nullptr ? 0 : categories[j];
  }
  __syncthreads();
  if (threadIdx.x >= row_size) return;

  const int64_t i = row_tile * kTile + threadIdx.x;
  acc_t a[4];
  for (int d = 0; d < 4; ++d) a[d] = boxes[i * 4 + d];
  const acc_t area_a = box_area<acc_t>(a);
  const int64_t category = categories == nullptr ? 0 : categories[i];
  unsigned long long bits = 0;
  const int start = row_tile == col_tile ? threadIdx.x + 1 : 0;
  for (int j = start; j < col_size; ++j) {
    if (col_categories[j] == category && box_iou<acc_t>(a, area_a, col_boxes + j * 4, col_areas[j]) > threshold) {
      bits |= 1ULL << j;
    }
  }
  mask[i * tiles + col_tile] = bits;
}

// Outputs of keep_kernel: `flags` (nms: kept flag per sorted box), or `indices` + `valid` (nms_fixed: max_keep
// entries, the kept input indices via `order`, then padding 0 / false). Unused pointers are null.
struct KeepOutput {
  bool* flags;
  const int64_t* order;
  int64_t* indices;
  bool* valid;
};

// One block sweeps the boxes in score order, one tile at a time. removed[t] (shared memory) holds the bits of the
// boxes of tile t suppressed by the kept boxes of the tiles already swept.
//
// Invariant: when tile T is reached, removed[T] is final with respect to every kept box of the earlier tiles (each
// earlier tile OR-ed the rows of its kept boxes into all later words before the __syncthreads that ends it). The
// only other boxes that can suppress a box b of T are the kept boxes a < b of T itself, whose bits for T are in
// the diagonal words mask[a][T]: staged in shared memory, they let every thread decide T's boxes with no global
// load, and the same decisions in every thread (kept_bits and kept are uniform across the block). The rows of
// T's kept boxes are then OR-ed into the words after T in parallel, thread threadIdx.x owning the words
// t == threadIdx.x (mod blockDim.x), each OR-ing up to kTile independent, coalesced loads.
__global__ void keep_kernel(const unsigned long long* __restrict__ mask, int64_t n, int64_t tiles, int64_t max_keep,
                            KeepOutput out) {
  RESNEST_DYNAMIC_SHARED(unsigned long long, removed);
  RESNEST_SHARED(unsigned long long, diagonal, kTile);
  for (int64_t t = threadIdx.x; t < tiles; t += blockDim.x) removed[t] = 0;
  __syncthreads();
  int64_t kept = 0;
  for (int64_t tile = 0; tile < tiles && kept != max_keep; ++tile) {
    const int64_t first = tile * kTile;
    const int size = static_cast<int>(min(n - first, static_cast<int64_t>(kTile)));
    // 1. Stage the tile's diagonal words: diagonal[b] = bits of the boxes of this tile after b that b suppresses.
    if (threadIdx.x < size) diagonal[threadIdx.x] = mask[(first + threadIdx.x) * tiles + tile];
    __syncthreads();

    // 2. Decide the tile's boxes in score order. The lowest candidate is kept: every box before it is decided and
    //    none of the kept ones suppresses it. Its diagonal word removes the later boxes it suppresses.
    unsigned long long candidates = ~removed[tile] & (size == kTile ? ~0ULL : (1ULL << size) - 1);
    unsigned long long kept_bits = 0;
    const int64_t kept_before = kept;
    while (candidates != 0 && kept != max_keep) {
      const int b = __ffsll(static_cast<long long>(candidates)) - 1;
      kept_bits |= 1ULL << b;
      ++kept;
      candidates &= ~(diagonal[b] | (1ULL << b));
    }

    // 3. One thread per kept box writes it out (its place among the kept boxes: those kept before it).
    const int b = threadIdx.x;
    if (b < kTile && ((kept_bits >> b) & 1ULL)) {
      const int64_t i = first + b;
      if (out.flags != nullptr) out.flags[i] = true;
      if (out.indices != nullptr) {
        const int64_t k = kept_before + __popcll(kept_bits & ((1ULL << b) - 1));
        out.indices[k] = out.order[i];
        out.valid[k] = true;
      }
    }

    // 4. OR the rows of the kept boxes into the words of the later tiles (not needed once max_keep are kept).
    if (kept != max_keep) {
      for (int64_t t = tile + 1 + threadIdx.x; t < tiles; t += blockDim.x) {
        const unsigned long long* column = mask + first * tiles + t;  // mask[first + a][t] = column[a * tiles]
        unsigned long long bits = 0;
#pragma unroll 8
        for (int a = 0; a < kTile; ++a) {
          if ((kept_bits >> a) & 1ULL) bits |= column[a * tiles];
        }
        removed[t] |= bits;
      }
    }
    __syncthreads();  // removed[tile + 1] is final; diagonal may be restaged
  }
  if (out.indices != nullptr) {
    for (int64_t k = kept + threadIdx.x; k < max_keep; k += blockDim.x) {
      out.indices[k] = 0;
      out.valid[k] = false;
    }
  }
}

// Sorts, builds the suppression bitmask (within each category of `idxs`, when given) and runs keep_kernel; returns
// the score order. n >= 1.
at::Tensor run_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs, double iou_threshold,
                   int64_t max_keep, KeepOutput out, const char* op) {
  const int64_t n = boxes.size(0);
  const int64_t tiles = (n + kTile - 1) / kTile;
  TORCH_CHECK(tiles <= kMaxTiles, op, ": at most ", kMaxTiles * kTile, " boxes on CUDA, got ", n);
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
  const at::Tensor sorted = boxes_in_acc_dtype(boxes).index_select(0, order).contiguous();
  const at::Tensor categories =
      idxs == nullptr ? at::Tensor() : idxs->to(at::kLong).index_select(0, order).contiguous();
  at::Tensor mask = at::empty({n * tiles}, boxes.options().dtype(at::kLong));
  const cudaStream_t stream = current_stream();
  auto* mask_ptr = reinterpret_cast<unsigned long long*>(mask.mutable_data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES(sorted.scalar_type(), "nms_cuda", [&] {
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(tiles));
    launch(mask_kernel<scalar_t>, grid, kTile, 0, stream, sorted.const_data_ptr<scalar_t>(),
           idxs == nullptr ? nullptr : categories.const_data_ptr<int64_t>(), n, tiles,
           static_cast<scalar_t>(iou_threshold), mask_ptr);
  });
  out.order = order.const_data_ptr<int64_t>();
  launch(keep_kernel, 1, kKeepThreads, tiles * sizeof(unsigned long long), stream, mask_ptr, n, tiles, max_keep, out);
  return order;
}

// nms (idxs null) and batched NMS within the categories of idxs: the kept input indices by descending score.
at::Tensor kept_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs, double iou_threshold,
                     int64_t max_keep, const char* op) {
  check_nms_input(boxes, scores, op);
  if (idxs != nullptr) check_nms_idxs(boxes, *idxs, op);
  check_max_keep(max_keep, /*fixed=*/false, op);
  check_kernel_device(boxes, op, "boxes");
  const DeviceGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0 || max_keep == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  at::Tensor keep = at::zeros({n}, boxes.options().dtype(at::kBool));
  const at::Tensor order = run_nms(boxes, scores, idxs, iou_threshold, max_keep,
                                   {keep.mutable_data_ptr<bool>(), nullptr, nullptr, nullptr}, op);
  // Kept positions in sorted order, ascending = by descending score; map back to input indices.
  return order.index_select(0, keep.nonzero().view(-1));
}

// The fixed-size form of kept_cuda: (keep [max_keep] padded with 0, valid [max_keep]), no host round trip.
std::tuple<at::Tensor, at::Tensor> kept_fixed_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                   const at::Tensor* idxs, double iou_threshold, int64_t max_keep,
                                                   const char* op) {
  check_nms_input(boxes, scores, op);
  if (idxs != nullptr) check_nms_idxs(boxes, *idxs, op);
  check_max_keep(max_keep, /*fixed=*/true, op);
  check_kernel_device(boxes, op, "boxes");
  const DeviceGuard guard(boxes.device());
  at::Tensor indices = at::zeros({max_keep}, boxes.options().dtype(at::kLong));
  at::Tensor valid = at::zeros({max_keep}, boxes.options().dtype(at::kBool));
  if (boxes.size(0) == 0 || max_keep == 0) return {indices, valid};
  run_nms(boxes, scores, idxs, iou_threshold, max_keep,
          {nullptr, nullptr, indices.mutable_data_ptr<int64_t>(), valid.mutable_data_ptr<bool>()}, op);
  return {indices, valid};
}

}  // namespace

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, int64_t max_keep) {
  return kept_cuda(boxes, scores, nullptr, iou_threshold, max_keep, "nms");
}

std::tuple<at::Tensor, at::Tensor> nms_fixed_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                  double iou_threshold, int64_t max_keep) {
  return kept_fixed_cuda(boxes, scores, nullptr, iou_threshold, max_keep, "nms_fixed");
}

at::Tensor batched_nms_per_class_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                                      double iou_threshold, int64_t max_keep) {
  return kept_cuda(boxes, scores, &idxs, iou_threshold, max_keep, "batched_nms");
}

std::tuple<at::Tensor, at::Tensor> batched_nms_fixed_per_class_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                                    const at::Tensor& idxs, double iou_threshold,
                                                                    int64_t max_keep) {
  return kept_fixed_cuda(boxes, scores, &idxs, iou_threshold, max_keep, "batched_nms_fixed");
}

RESNEST_CUDA_KERNELS(m) {
  m.impl("nms", &nms_cuda);
  m.impl("nms_fixed", &nms_fixed_cuda);
  m.impl("_batched_nms_per_class", &batched_nms_per_class_cuda);
  m.impl("_batched_nms_per_class_fixed", &batched_nms_fixed_per_class_cuda);
}

}  // namespace resnest_cuda
