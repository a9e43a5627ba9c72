// CUDA kernels of the fused split-attention ops.
//
// Every kernel reads its inputs once and writes its outputs once: attention weights are recomputed from the
// [B, R*C] logits where they are needed (R exps per output vector, from cache) instead of being materialised.
// Loads and stores are 16-byte vectors when the row length (NCHW: H*W, channels_last: C) and the base pointers
// allow it, scalar otherwise. Reductions over H*W are split across blocks when there are few rows (large maps,
// few channels) and finished by a small deterministic kernel; accumulation is fp32 (fp64 for double).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../split_attention.h"

namespace resnest_cuda {
namespace {

constexpr int kThreads = 256;

struct Dims {
  int64_t B, R, C, K, HW;
};

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int N, typename T>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <int N, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}

__device__ __forceinline__ float exp_acc(float v) { return __expf(v); }
__device__ __forceinline__ double exp_acc(double v) { return exp(v); }

// Softmax statistics over the R logits of channel j of image b: the max and 1 / sum(exp(l - max)).
// logits are cardinal-major: element (k, r, c) of image b at b*R*C + k*R*(C/K) + r*(C/K) + c.
template <typename scalar_t, typename acc_t>
struct Attention {
  const scalar_t* base;  // logits of (b, k, r = 0, c)
  int64_t stride;        // C / K: distance between consecutive r
  acc_t max, inv_sum;
  bool sigmoid;

  Attention() = default;
  __device__ __forceinline__ Attention(const scalar_t* logits, const Dims& d, int64_t b, int64_t j) {
    init(logits, d, b, j);
  }

  __device__ __forceinline__ void init(const scalar_t* logits, const Dims& d, int64_t b, int64_t j) {
    const int64_t ck = d.C / d.K;
    const int64_t k = j / ck, c = j - k * ck;
    base = logits + b * d.R * d.C + k * d.R * ck + c;
    stride = ck;
    sigmoid = d.R == 1;
    max = 0;
    inv_sum = 1;
    if (!sigmoid) {
      max = static_cast<acc_t>(base[0]);
      for (int64_t r = 1; r < d.R; ++r) max = ::max(max, static_cast<acc_t>(base[r * stride]));
      acc_t sum = 0;
      for (int64_t r = 0; r < d.R; ++r) sum += exp_acc(static_cast<acc_t>(base[r * stride]) - max);
      inv_sum = acc_t(1) / sum;
    }
  }

  __device__ __forceinline__ acc_t weight(int64_t r) const {
    const acc_t l = static_cast<acc_t>(base[r * stride]);
    if (sigmoid) return acc_t(1) / (acc_t(1) + exp_acc(-l));
    return exp_acc(l - max) * inv_sum;
  }
};

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over a group of GROUP consecutive threads (GROUP = 32 or kThreads); the result is valid in the group's
// first thread. `shared` holds kThreads / 32 values.
template <int GROUP, typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t v, acc_t* shared) {
  v = warp_sum(v);
  if (GROUP == 32) return v;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // shared may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  acc_t total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kThreads / 32; ++w) total += shared[w];
  }
  return total;
}

// Streaming multiprocessors of the current device (cached per device; launch sizing only).
int sm_count() {
  constexpr int kMaxDevices = 64;
  static int cache[kMaxDevices] = {0};
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  if (device >= kMaxDevices) device = kMaxDevices - 1;
  if (cache[device] == 0) {
    int count = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    cache[device] = count;
  }
  return cache[device];
}

template <typename scalar_t>
constexpr int vec_size() {
  return 16 / static_cast<int>(sizeof(scalar_t));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Grid size for an elementwise kernel over `n` items with a grid-stride loop.
unsigned elementwise_blocks(int64_t n) {
  const int64_t want = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(want, int64_t(sm_count()) * 32)));
}

// How many blocks share one reduction row so that the grid fills the GPU (about 4 waves of blocks).
int64_t reduction_splits(int64_t work_items, int64_t row_length, int64_t min_per_split) {
  const int64_t target = int64_t(sm_count()) * 4;
  int64_t splits = std::max<int64_t>(1, target / std::max<int64_t>(1, work_items));
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, row_length / min_per_split));
  return splits;
}

// ---------------------------------------------------------------------------------------------------------
// Reductions over H*W, NCHW: one work item is (row = b*C + j, split); a group of GROUP threads handles it.
// MODE 0 (pool):     partial[b, s, j]    = sum_r sum_hw x[b, r*C + j, hw]
// MODE 1 (backward): partial[b, s, r, j] = sum_hw dout[b, j, hw] * x[b, r*C + j, hw], and dx = att_r * dout.

template <int MODE, int GROUP, int V, typename scalar_t>
__global__ void reduce_nchw_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dout,
                                   const scalar_t* __restrict__ logits, scalar_t* __restrict__ dx,
                                   at::opmath_type<scalar_t>* __restrict__ partial, Dims d, int64_t splits,
                                   int64_t chunk) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[kThreads / 32];
  constexpr int kGroups = kThreads / GROUP;
  const int lane = threadIdx.x % GROUP;
  const int64_t items = d.B * d.C * splits;
  for (int64_t item = int64_t(blockIdx.x) * kGroups + threadIdx.x / GROUP; item - threadIdx.x / GROUP < items;
       item += int64_t(gridDim.x) * kGroups) {
    const bool active = item < items;
    const int64_t row = active ? item / splits : 0, s = active ? item % splits : 0;
    const int64_t b = row / d.C, j = row - b * d.C;
    const int64_t begin = s * chunk, end = active ? ::min(d.HW, begin + chunk) : begin;
    acc_t acc = 0;
    for (int64_t r = 0; r < d.R; ++r) {
      const scalar_t* px = x + ((b * d.R + r) * d.C + j) * d.HW;
      if (MODE == 0) {
        for (int64_t i = begin + int64_t(lane) * V; i < end; i += int64_t(GROUP) * V) {
          const Pack<scalar_t, V> xv = load_pack<V>(px + i);
#pragma unroll
          for (int v = 0; v < V; ++v) acc += static_cast<acc_t>(xv.v[v]);
        }
      } else {
        const scalar_t* pg = dout + row * d.HW;
        // dx == nullptr: only the logits gradient is wanted (split_attention_logits_backward).
        scalar_t* pdx = dx != nullptr ? dx + ((b * d.R + r) * d.C + j) * d.HW : nullptr;
        const acc_t a = active && pdx != nullptr ? Attention<scalar_t, acc_t>(logits, d, b, j).weight(r) : acc_t(0);
        for (int64_t i = begin + int64_t(lane) * V; i < end; i += int64_t(GROUP) * V) {
          const Pack<scalar_t, V> xv = load_pack<V>(px + i);
          const Pack<scalar_t, V> gv = load_pack<V>(pg + i);
          Pack<scalar_t, V> o;
#pragma unroll
          for (int v = 0; v < V; ++v) {
            const acc_t g = static_cast<acc_t>(gv.v[v]);
            acc += g * static_cast<acc_t>(xv.v[v]);
            o.v[v] = static_cast<scalar_t>(a * g);
          }
          if (pdx != nullptr) store_pack<V>(pdx + i, o);
        }
        const acc_t total = group_sum<GROUP>(acc, shared);
        if (lane == 0 && active) partial[((b * splits + s) * d.R + r) * d.C + j] = total;
        acc = 0;
      }
    }
    if (MODE == 0) {
      const acc_t total = group_sum<GROUP>(acc, shared);
      if (lane == 0 && active) partial[(b * splits + s) * d.C + j] = total;
    }
  }
}

// Reductions over H*W, channels_last: block (TX, TY) covers TX*V channels of one image and one split of the
// pixels; thread (tx, ty) walks pixels ty, ty + TY, ... of the split. Partial layouts as in the NCHW kernel.
template <int MODE, int V, typename scalar_t>
__global__ void reduce_nhwc_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dout,
                                   const scalar_t* __restrict__ logits, scalar_t* __restrict__ dx,
                                   at::opmath_type<scalar_t>* __restrict__ partial, Dims d, int64_t splits,
                                   int64_t chunk) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ unsigned char smem_raw[];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);  // [TY][TX * V]
  const int tx = threadIdx.x, ty = threadIdx.y, TX = blockDim.x, TY = blockDim.y;
  const int64_t j0 = (int64_t(blockIdx.x) * TX + tx) * V;
  const int64_t s = blockIdx.y, b = blockIdx.z;
  const bool active = j0 < d.C;
  const int64_t begin = s * chunk, end = ::min(d.HW, begin + chunk);
  const int64_t nrc = d.R * d.C;
  const int64_t outputs = MODE == 0 ? 1 : d.R;
  for (int64_t ro = 0; ro < outputs; ++ro) {
    acc_t acc[V];
#pragma unroll
    for (int v = 0; v < V; ++v) acc[v] = 0;
    if (active) {
      if (MODE == 0) {
        for (int64_t hw = begin + ty; hw < end; hw += TY) {
          const scalar_t* px = x + (b * d.HW + hw) * nrc + j0;
          for (int64_t r = 0; r < d.R; ++r) {
            const Pack<scalar_t, V> xv = load_pack<V>(px + r * d.C);
#pragma unroll
            for (int v = 0; v < V; ++v) acc[v] += static_cast<acc_t>(xv.v[v]);
          }
        }
      } else {
        acc_t a[V];
#pragma unroll
        for (int v = 0; v < V; ++v) {
          a[v] = dx != nullptr ? Attention<scalar_t, acc_t>(logits, d, b, j0 + v).weight(ro) : acc_t(0);
        }
        for (int64_t hw = begin + ty; hw < end; hw += TY) {
          const int64_t pix = b * d.HW + hw;
          const Pack<scalar_t, V> gv = load_pack<V>(dout + pix * d.C + j0);
          const Pack<scalar_t, V> xv = load_pack<V>(x + pix * nrc + ro * d.C + j0);
          Pack<scalar_t, V> o;
#pragma unroll
          for (int v = 0; v < V; ++v) {
            const acc_t g = static_cast<acc_t>(gv.v[v]);
            acc[v] += g * static_cast<acc_t>(xv.v[v]);
            o.v[v] = static_cast<scalar_t>(a[v] * g);
          }
          if (dx != nullptr) store_pack<V>(dx + pix * nrc + ro * d.C + j0, o);
        }
      }
    }
    __syncthreads();  // smem may still be read from the previous output
#pragma unroll
    for (int v = 0; v < V; ++v) smem[ty * TX * V + tx * V + v] = acc[v];
    __syncthreads();
    if (ty == 0 && active) {
      for (int v = 0; v < V; ++v) {
        acc_t total = 0;
        for (int y = 0; y < TY; ++y) total += smem[y * TX * V + tx * V + v];
        partial[((b * splits + s) * outputs + ro) * d.C + j0 + v] = total;
      }
    }
  }
}

// gap[b, j] = sum_s partial[b, s, j] / HW
template <typename scalar_t>
__global__ void pool_finish_kernel(const at::opmath_type<scalar_t>* __restrict__ partial, scalar_t* __restrict__ gap,
                                   Dims d, int64_t splits) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(d.HW);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < d.B * d.C;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / d.C, j = i - b * d.C;
    acc_t total = 0;
    for (int64_t s = 0; s < splits; ++s) total += partial[(b * splits + s) * d.C + j];
    gap[i] = static_cast<scalar_t>(total * inv_hw);
  }
}

// grad_logits (cardinal-major) from ds[b, r, j] = sum_s partial[b, s, r, j] through the softmax Jacobian
// da_r = s_r * (ds_r - sum_r' s_r' ds_r'), or the sigmoid's s * (1 - s) * ds when R == 1.
template <typename scalar_t>
__global__ void logits_grad_kernel(const at::opmath_type<scalar_t>* __restrict__ partial,
                                   const scalar_t* __restrict__ logits, scalar_t* __restrict__ dlogits, Dims d,
                                   int64_t splits) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t ck = d.C / d.K;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < d.B * d.C;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / d.C, j = i - b * d.C, k = j / ck, c = j - k * ck;
    const Attention<scalar_t, acc_t> att(logits, d, b, j);
    acc_t dot = 0;
    for (int64_t r = 0; r < d.R; ++r) {
      acc_t ds = 0;
      for (int64_t s = 0; s < splits; ++s) ds += partial[((b * splits + s) * d.R + r) * d.C + j];
      dot += att.weight(r) * ds;
    }
    for (int64_t r = 0; r < d.R; ++r) {
      acc_t ds = 0;
      for (int64_t s = 0; s < splits; ++s) ds += partial[((b * splits + s) * d.R + r) * d.C + j];
      const acc_t w = att.weight(r);
      const acc_t da = d.R == 1 ? ds * w * (acc_t(1) - w) : w * (ds - dot);
      dlogits[b * d.R * d.C + k * d.R * ck + r * ck + c] = static_cast<scalar_t>(da);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Elementwise kernels. Item e covers V consecutive elements of the output in memory order.

// out[b, j, hw] = sum_r att[b, r, j] * x[b, r*C + j, hw]
template <int V, bool CHANNELS_LAST, typename scalar_t>
__global__ void combine_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ logits,
                               scalar_t* __restrict__ out, Dims d) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = d.B * d.C * d.HW / V;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t first = e * V;
    acc_t acc[V];
#pragma unroll
    for (int v = 0; v < V; ++v) acc[v] = 0;
    if (!CHANNELS_LAST) {  // V divides HW: the V elements share one (b, j)
      const int64_t row = first / d.HW, hw = first - row * d.HW;
      const int64_t b = row / d.C, j = row - b * d.C;
      const Attention<scalar_t, acc_t> att(logits, d, b, j);
      for (int64_t r = 0; r < d.R; ++r) {
        const acc_t a = att.weight(r);
        const Pack<scalar_t, V> xv = load_pack<V>(x + ((b * d.R + r) * d.C + j) * d.HW + hw);
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] += a * static_cast<acc_t>(xv.v[v]);
      }
    } else {  // V divides C: the V elements are channels j .. j+V-1 of one pixel
      const int64_t pix = first / d.C, j = first - pix * d.C, b = pix / d.HW;
      Attention<scalar_t, acc_t> att[V];
#pragma unroll
      for (int v = 0; v < V; ++v) att[v].init(logits, d, b, j + v);
      for (int64_t r = 0; r < d.R; ++r) {
        const Pack<scalar_t, V> xv = load_pack<V>(x + (pix * d.R + r) * d.C + j);
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] += att[v].weight(r) * static_cast<acc_t>(xv.v[v]);
      }
    }
    Pack<scalar_t, V> o;
#pragma unroll
    for (int v = 0; v < V; ++v) o.v[v] = static_cast<scalar_t>(acc[v]);
    store_pack<V>(out + first, o);
  }
}

// dx[b, r*C + j, hw] = att[b, r, j] * dout[b, j, hw] + dgap[b, j] / HW
template <int V, bool CHANNELS_LAST, typename scalar_t>
__global__ void input_backward_kernel(const scalar_t* __restrict__ dout, const scalar_t* __restrict__ logits,
                                      const at::opmath_type<scalar_t>* __restrict__ dgap, scalar_t* __restrict__ dx,
                                      Dims d) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(d.HW);
  const int64_t n = d.B * d.R * d.C * d.HW / V;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t first = e * V;
    Pack<scalar_t, V> o;
    if (!CHANNELS_LAST) {  // V divides HW: one (b, r, j) row
      const int64_t xrow = first / d.HW, hw = first - xrow * d.HW;
      const int64_t b = xrow / (d.R * d.C), rj = xrow - b * d.R * d.C, r = rj / d.C, j = rj - r * d.C;
      const acc_t a = Attention<scalar_t, acc_t>(logits, d, b, j).weight(r);
      const acc_t g = dgap[b * d.C + j] * inv_hw;
      const Pack<scalar_t, V> gv = load_pack<V>(dout + (b * d.C + j) * d.HW + hw);
#pragma unroll
      for (int v = 0; v < V; ++v) o.v[v] = static_cast<scalar_t>(a * static_cast<acc_t>(gv.v[v]) + g);
    } else {  // V divides C: channels r*C + j .. j+V-1 of one pixel
      const int64_t pix = first / (d.R * d.C), rj = first - pix * d.R * d.C, r = rj / d.C, j = rj - r * d.C;
      const int64_t b = pix / d.HW;
      const Pack<scalar_t, V> gv = load_pack<V>(dout + pix * d.C + j);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const acc_t a = Attention<scalar_t, acc_t>(logits, d, b, j + v).weight(r);
        o.v[v] = static_cast<scalar_t>(a * static_cast<acc_t>(gv.v[v]) + dgap[b * d.C + j + v] * inv_hw);
      }
    }
    store_pack<V>(dx + first, o);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Launchers

Dims dims_of(const at::Tensor& x, int64_t radix, int64_t cardinality) {
  return {x.size(0), radix, x.size(1) / radix, cardinality, x.size(2) * x.size(3)};
}

bool is_channels_last(const at::Tensor& t) { return activation_format(t) == at::MemoryFormat::ChannelsLast; }

// Runs the MODE reduction; returns the fp32 partial sums and the number of splits.
template <int MODE, typename scalar_t>
std::tuple<at::Tensor, int64_t> launch_reduction(const at::Tensor& x, const at::Tensor& dout, const at::Tensor& logits,
                                                 const at::Tensor& dx, const Dims& d, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = vec_size<scalar_t>();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t outputs = MODE == 0 ? 1 : d.R;
  const scalar_t* px = x.const_data_ptr<scalar_t>();
  const scalar_t* pg = MODE == 1 ? dout.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* pl = MODE == 1 ? logits.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* pdx = MODE == 1 && dx.defined() ? dx.mutable_data_ptr<scalar_t>() : nullptr;
  bool vec = aligned16(px) && (MODE == 0 || (aligned16(pg) && aligned16(pdx)));
  if (!channels_last) {
    vec = vec && d.HW % V == 0;
    // Short rows: a warp per row. Long rows: a block per (row, split).
    const bool small = d.HW <= 2048;
    const int group = small ? 32 : kThreads;
    const int64_t splits = small ? 1 : reduction_splits(d.B * d.C, d.HW, 4 * kThreads * V);
    const int64_t chunk = ((d.HW + splits - 1) / splits + V - 1) / V * V;
    at::Tensor partial = at::empty({d.B, splits, outputs, d.C}, x.options().dtype(acc_dtype));
    const int64_t items = d.B * d.C * splits;
    const unsigned blocks = static_cast<unsigned>(
        std::min<int64_t>((items + kThreads / group - 1) / (kThreads / group), int64_t(sm_count()) * 32));
    acc_t* pp = partial.mutable_data_ptr<acc_t>();
#define RESNEST_LAUNCH_NCHW(GROUP, VEC) \
  reduce_nchw_kernel<MODE, GROUP, VEC, scalar_t><<<blocks, kThreads, 0, stream>>>(px, pg, pl, pdx, pp, d, splits, chunk)
    if (small && vec) RESNEST_LAUNCH_NCHW(32, V);
    else if (small) RESNEST_LAUNCH_NCHW(32, 1);
    else if (vec) RESNEST_LAUNCH_NCHW(kThreads, V);
    else RESNEST_LAUNCH_NCHW(kThreads, 1);
#undef RESNEST_LAUNCH_NCHW
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {partial, splits};
  }
  vec = vec && d.C % V == 0;
  const int v = vec ? V : 1;
  const int64_t cols = (d.C + v - 1) / v;
  int tx = 1;
  while (tx < cols && tx < 32) tx <<= 1;
  const int ty = kThreads / tx;
  const int64_t col_blocks = (cols + tx - 1) / tx;
  const int64_t splits = reduction_splits(col_blocks * d.B, d.HW, 4 * ty);
  const int64_t chunk = (d.HW + splits - 1) / splits;
  at::Tensor partial = at::empty({d.B, splits, outputs, d.C}, x.options().dtype(acc_dtype));
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(splits), static_cast<unsigned>(d.B));
  const dim3 block(tx, ty);
  const size_t smem = sizeof(acc_t) * kThreads * v;
  acc_t* pp = partial.mutable_data_ptr<acc_t>();
  if (vec) {
    reduce_nhwc_kernel<MODE, V, scalar_t><<<grid, block, smem, stream>>>(px, pg, pl, pdx, pp, d, splits, chunk);
  } else {
    reduce_nhwc_kernel<MODE, 1, scalar_t><<<grid, block, smem, stream>>>(px, pg, pl, pdx, pp, d, splits, chunk);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {partial, splits};
}

}  // namespace

at::Tensor split_attention_pool_cuda(const at::Tensor& x, int64_t radix) {
  check_split_attention_input(x, radix, "split_attention_pool");
  TORCH_CHECK(x.size(0) <= 65535, "split_attention_pool: batch size must be <= 65535 on CUDA, got ", x.size(0));
  const c10::cuda::CUDAGuard guard(x.device());
  const bool cl = is_channels_last(x);
  const at::Tensor xc = x.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const Dims d = dims_of(x, radix, 1);
  at::Tensor gap = at::empty({d.B, d.C}, x.options());
  if (gap.numel() == 0) return gap;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_pool_cuda", [&] {
    auto [partial, splits] = launch_reduction<0, scalar_t>(xc, at::Tensor(), at::Tensor(), at::Tensor(), d, cl);
    pool_finish_kernel<scalar_t><<<elementwise_blocks(d.B * d.C), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        partial.const_data_ptr<at::opmath_type<scalar_t>>(), gap.mutable_data_ptr<scalar_t>(), d, splits);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gap;
}

at::Tensor split_attention_combine_cuda(const at::Tensor& x, const at::Tensor& logits, int64_t radix,
                                        int64_t cardinality) {
  check_combine_logits(x, logits, radix, cardinality, "split_attention_combine");
  const c10::cuda::CUDAGuard guard(x.device());
  const bool cl = is_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor lc = logits.contiguous();
  const Dims d = dims_of(x, radix, cardinality);
  at::Tensor out = at::empty({d.B, d.C, x.size(2), x.size(3)}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_combine_cuda", [&] {
    constexpr int V = vec_size<scalar_t>();
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const scalar_t* px = xc.const_data_ptr<scalar_t>();
    const scalar_t* pl = lc.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const bool vec = aligned16(px) && aligned16(po) && (cl ? d.C % V == 0 : d.HW % V == 0);
    const unsigned blocks = elementwise_blocks(out.numel() / (vec ? V : 1));
    if (cl && vec) combine_kernel<V, true, scalar_t><<<blocks, kThreads, 0, stream>>>(px, pl, po, d);
    else if (cl) combine_kernel<1, true, scalar_t><<<blocks, kThreads, 0, stream>>>(px, pl, po, d);
    else if (vec) combine_kernel<V, false, scalar_t><<<blocks, kThreads, 0, stream>>>(px, pl, po, d);
    else combine_kernel<1, false, scalar_t><<<blocks, kThreads, 0, stream>>>(px, pl, po, d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> split_attention_combine_backward_cuda(const at::Tensor& grad_out,
                                                                         const at::Tensor& x,
                                                                         const at::Tensor& logits, int64_t radix,
                                                                         int64_t cardinality) {
  check_combine_logits(x, logits, radix, cardinality, "split_attention_combine_backward");
  const Dims d = dims_of(x, radix, cardinality);
  check_grad_out(grad_out, x, radix, "split_attention_combine_backward");
  TORCH_CHECK(d.B <= 65535, "split_attention_combine_backward: batch size must be <= 65535 on CUDA, got ", d.B);
  const c10::cuda::CUDAGuard guard(x.device());
  const bool cl = is_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor gc = grad_out.to(x.scalar_type()).contiguous(fmt);
  const at::Tensor lc = logits.contiguous();
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(fmt));
  at::Tensor dlogits = at::empty(logits.sizes(), logits.options());
  if (x.numel() == 0) return {dx, dlogits};  // B == 0 or C == 0: no kernel launch
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_combine_bwd_cuda", [&] {
    auto [partial, splits] = launch_reduction<1, scalar_t>(xc, gc, lc, dx, d, cl);
    logits_grad_kernel<scalar_t><<<elementwise_blocks(d.B * d.C), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        partial.const_data_ptr<at::opmath_type<scalar_t>>(), lc.const_data_ptr<scalar_t>(),
        dlogits.mutable_data_ptr<scalar_t>(), d, splits);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dx, dlogits};
}

at::Tensor split_attention_logits_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                               const at::Tensor& logits, int64_t radix, int64_t cardinality) {
  check_combine_logits(x, logits, radix, cardinality, "split_attention_logits_backward");
  check_grad_out(grad_out, x, radix, "split_attention_logits_backward");
  const Dims d = dims_of(x, radix, cardinality);
  TORCH_CHECK(d.B <= 65535, "split_attention_logits_backward: batch size must be <= 65535 on CUDA, got ", d.B);
  const c10::cuda::CUDAGuard guard(x.device());
  const bool cl = is_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor gc = grad_out.to(x.scalar_type()).contiguous(fmt);
  const at::Tensor lc = logits.contiguous();
  at::Tensor dlogits = at::empty(logits.sizes(), logits.options());
  if (x.numel() == 0) return dlogits;  // B == 0 or C == 0: no kernel launch
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_logits_bwd_cuda", [&] {
    auto [partial, splits] = launch_reduction<1, scalar_t>(xc, gc, lc, at::Tensor(), d, cl);
    logits_grad_kernel<scalar_t><<<elementwise_blocks(d.B * d.C), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        partial.const_data_ptr<at::opmath_type<scalar_t>>(), lc.const_data_ptr<scalar_t>(),
        dlogits.mutable_data_ptr<scalar_t>(), d, splits);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dlogits;
}

at::Tensor split_attention_input_backward_cuda(const at::Tensor& grad_out, const at::Tensor& logits,
                                               const at::Tensor& grad_gap, int64_t radix, int64_t cardinality) {
  check_input_backward_args(grad_out, logits, grad_gap, radix, cardinality);
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const bool cl = is_channels_last(grad_out);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor gc = grad_out.contiguous(fmt);
  const Dims d{grad_out.size(0), radix, grad_out.size(1), cardinality, grad_out.size(2) * grad_out.size(3)};
  at::Tensor dx = at::empty({d.B, d.R * d.C, grad_out.size(2), grad_out.size(3)}, grad_out.options().memory_format(fmt));
  if (dx.numel() == 0) return dx;
  const at::Tensor lc = logits.contiguous();
  const at::Tensor dg = grad_gap.to(grad_out.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "split_attention_input_bwd_cuda",
                                  [&] {
    constexpr int V = vec_size<scalar_t>();
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const scalar_t* pg = gc.const_data_ptr<scalar_t>();
    const scalar_t* pl = lc.const_data_ptr<scalar_t>();
    const auto* pd = dg.const_data_ptr<at::opmath_type<scalar_t>>();
    scalar_t* pdx = dx.mutable_data_ptr<scalar_t>();
    const bool vec = aligned16(pg) && aligned16(pdx) && (cl ? d.C % V == 0 : d.HW % V == 0);
    const unsigned blocks = elementwise_blocks(dx.numel() / (vec ? V : 1));
    if (cl && vec) input_backward_kernel<V, true, scalar_t><<<blocks, kThreads, 0, stream>>>(pg, pl, pd, pdx, d);
    else if (cl) input_backward_kernel<1, true, scalar_t><<<blocks, kThreads, 0, stream>>>(pg, pl, pd, pdx, d);
    else if (vec) input_backward_kernel<V, false, scalar_t><<<blocks, kThreads, 0, stream>>>(pg, pl, pd, pdx, d);
    else input_backward_kernel<1, false, scalar_t><<<blocks, kThreads, 0, stream>>>(pg, pl, pd, pdx, d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

TORCH_LIBRARY_IMPL(resnest_cuda, CUDA, m) {
  m.impl("split_attention_logits_backward", &split_attention_logits_backward_cuda);
  m.impl("split_attention_input_backward", &split_attention_input_backward_cuda);
  m.impl("split_attention_pool", &split_attention_pool_cuda);
  m.impl("split_attention_combine", &split_attention_combine_cuda);
  m.impl("split_attention_combine_backward", &split_attention_combine_backward_cuda);
}

}  // namespace resnest_cuda
