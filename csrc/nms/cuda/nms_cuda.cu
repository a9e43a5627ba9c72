// CUDA NMS with a bitmask of 64-box tiles.
//
// 1. Stable sort by descending score; boxes gathered in that order, in fp32 (fp64 for fp64 boxes).
// 2. mask_kernel: block (row tile, column tile) of 64 threads; thread i sets bit j of mask[i][column tile] when box
//    j (later in score order than i) has IoU > threshold with box i. Only tiles on or above the diagonal are
//    computed (and read).
// 3. keep_kernel: one block walks the boxes in score order, keeping a box unless a kept box already set its bit,
//    and ORs the kept box's mask row into the running "removed" bits (held in shared memory, one word per tile).
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../nms.h"

namespace resnest_cuda {
namespace {

constexpr int kTile = 64;  // boxes per tile = threads per block = bits per mask word
constexpr int kKeepThreads = 128;
constexpr int64_t kMaxTiles = 48 * 1024 / 8;  // "removed" words fit the default 48 KiB of shared memory

template <typename acc_t>
__global__ void mask_kernel(const acc_t* __restrict__ boxes, int64_t n, int64_t tiles, acc_t threshold,
                            unsigned long long* __restrict__ mask) {
  const int64_t row_tile = blockIdx.y, col_tile = blockIdx.x;
  if (row_tile > col_tile) return;  // box j only matters to boxes i < j
  const int row_size = static_cast<int>(min(n - row_tile * kTile, static_cast<int64_t>(kTile)));
  const int col_size = static_cast<int>(min(n - col_tile * kTile, static_cast<int64_t>(kTile)));

  __shared__ acc_t col_boxes[kTile * 4];
  __shared__ acc_t col_areas[kTile];
  if (threadIdx.x < col_size) {
    const acc_t* b = boxes + (col_tile * kTile + threadIdx.x) * 4;
    for (int d = 0; d < 4; ++d) col_boxes[threadIdx.x * 4 + d] = b[d];
    col_areas[threadIdx.x] = box_area<acc_t>(b);
  }
  __syncthreads();
  if (threadIdx.x >= row_size) return;

  const int64_t i = row_tile * kTile + threadIdx.x;
  acc_t a[4];
  for (int d = 0; d < 4; ++d) a[d] = boxes[i * 4 + d];
  const acc_t area_a = box_area<acc_t>(a);
  unsigned long long bits = 0;
  const int start = row_tile == col_tile ? threadIdx.x + 1 : 0;
  for (int j = start; j < col_size; ++j) {
    if (box_iou<acc_t>(a, area_a, col_boxes + j * 4, col_areas[j]) > threshold) bits |= 1ULL << j;
  }
  mask[i * tiles + col_tile] = bits;
}

__global__ void keep_kernel(const unsigned long long* __restrict__ mask, int64_t n, int64_t tiles,
                            bool* __restrict__ keep) {
  extern __shared__ unsigned long long removed[];
  for (int64_t t = threadIdx.x; t < tiles; t += blockDim.x) removed[t] = 0;
  __syncthreads();
  for (int64_t tile = 0; tile < tiles; ++tile) {
    // Every thread follows the same sequence of decisions (rem is the same everywhere), and each thread owns the
    // words t == threadIdx.x (mod blockDim.x) of `removed`, so the only synchronisation needed is per tile.
    unsigned long long rem = removed[tile];
    const int size = static_cast<int>(min(n - tile * kTile, static_cast<int64_t>(kTile)));
    for (int b = 0; b < size; ++b) {
      if ((rem >> b) & 1ULL) continue;
      const int64_t i = tile * kTile + b;
      if (threadIdx.x == 0) keep[i] = true;
      const unsigned long long* row = mask + i * tiles;
      rem |= row[tile];
      for (int64_t t = tile + 1 + threadIdx.x; t < tiles; t += blockDim.x) removed[t] |= row[t];
    }
    __syncthreads();
  }
}

}  // namespace

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_input(boxes, scores, "nms");
  TORCH_CHECK(boxes.is_cuda(), "nms: boxes must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const int64_t tiles = (n + kTile - 1) / kTile;
  TORCH_CHECK(tiles <= kMaxTiles, "nms: at most ", kMaxTiles * kTile, " boxes on CUDA, got ", n);

  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted = boxes_in_acc_dtype(boxes).index_select(0, order).contiguous();
  at::Tensor mask = at::empty({n * tiles}, boxes.options().dtype(at::kLong));
  at::Tensor keep = at::zeros({n}, boxes.options().dtype(at::kBool));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto* mask_ptr = reinterpret_cast<unsigned long long*>(mask.mutable_data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES(sorted.scalar_type(), "nms_cuda", [&] {
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(tiles));
    mask_kernel<scalar_t><<<grid, kTile, 0, stream>>>(sorted.const_data_ptr<scalar_t>(), n, tiles,
                                                       static_cast<scalar_t>(iou_threshold), mask_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  keep_kernel<<<1, kKeepThreads, tiles * sizeof(unsigned long long), stream>>>(mask_ptr, n, tiles,
                                                                                keep.mutable_data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Kept positions in sorted order, ascending = by descending score; map back to input indices.
  return order.index_select(0, keep.nonzero().view(-1));
}

TORCH_LIBRARY_IMPL(resnest_cuda, CUDA, m) { m.impl("nms", &nms_cuda); }

}  // namespace resnest_cuda
