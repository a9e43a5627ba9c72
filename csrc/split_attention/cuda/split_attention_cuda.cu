// CUDA kernels of the fused split-attention ops.
//
// Every kernel reads its inputs once and writes its outputs once. The attention weights are computed once per
// (b, r, j) into a small [B, R, C] buffer in the accumulation type (attention_weights_kernel) and loaded by the
// kernels that need them. Loads and stores are 16-byte vectors when the base pointers allow it and, for NCHW, the
// rows of all operands share one alignment phase (C*H*W a multiple of the vector width: each row then has a
// scalar head, vectors and a scalar tail), for channels_last when C is a multiple of the width; scalar
// otherwise. Images, channels and pixels (or row positions) are separate grid dimensions walked by stride loops,
// so no kernel divides a 64-bit index. Reductions over H*W are split across blocks when there are few rows (large
// maps, few channels) and finished by a small deterministic kernel; accumulation is fp32 (fp64 for double).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <limits>
#include <tuple>
#include <type_traits>

#include "../../batch_norm/cuda/affine.cuh"  // includes cuda_support.cuh
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
// C fits in 32 bits (checked by the launchers), so the channel split is 32-bit.
template <typename scalar_t, typename acc_t>
struct Attention {
  const scalar_t* base;  // logits of (b, k, r = 0, c)
  int64_t stride;        // C / K: distance between consecutive r
  acc_t max, inv_sum;
  bool sigmoid;

  // ck = C / K
  __device__ __forceinline__ Attention(const scalar_t* logits, const Dims& d, int ck, int64_t b, int j) {
    const int k = j / ck, c = j - k * ck;
    base = logits + b * d.R * d.C + int64_t(k) * d.R * ck + c;
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

// How a kernel reads its activation x: as it is (Plain), or as the output of the BatchNorm + ReLU that x is the
// input of (NormRelu: u = relu(x * scale_c + shift_c) rounded to x's dtype with the BatchNorm kernels' AffineMap
// and relu_affine, bit for bit what batch_norm_act would have written; the split_attention_norm_* ops).
// channel(c) gives the reader of x channel c (of R*C); a kernel asks for it once per channel it walks.
template <typename scalar_t>
struct Plain {
  using acc_t = at::opmath_type<scalar_t>;
  struct Channel {
    __device__ __forceinline__ acc_t operator()(scalar_t v) const { return static_cast<acc_t>(v); }
  };
  __device__ __forceinline__ Channel channel(int64_t) const { return {}; }
};

template <typename scalar_t>
struct NormRelu {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* scale;  // [R*C], AffineMap::at of each channel (affine_table_kernel)
  const acc_t* shift;
  struct Channel {
    acc_t scale, shift;
    __device__ __forceinline__ acc_t operator()(scalar_t v) const {
      return relu_affine<scalar_t, acc_t>(v, scale, shift);
    }
  };
  __device__ __forceinline__ Channel channel(int64_t c) const { return {scale[c], shift[c]}; }
};

// scale[c], shift[c] = AffineMap::at(c) for the R*C channels of x: the readers load them instead of recomputing
// the map per element. Block (kThreads, 1).
template <typename acc_t>
__global__ void affine_table_kernel(AffineMap<acc_t> affine, int64_t channels, acc_t* __restrict__ scale,
                                    acc_t* __restrict__ shift) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < channels; c += int64_t(gridDim.x) * blockDim.x) {
    acc_t sc, sh;
    affine.at(c, sc, sh);
    scale[c] = sc;
    shift[c] = sh;
  }
}

template <typename scalar_t>
constexpr int vec_size() {
  return 16 / static_cast<int>(sizeof(scalar_t));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// How many blocks share one reduction row so that the grid fills the GPU (about 4 waves of blocks).
int64_t reduction_splits(int64_t work_items, int64_t row_length, int64_t min_per_split) {
  const int64_t target = int64_t(sm_count()) * 4;
  int64_t splits = std::max<int64_t>(1, target / std::max<int64_t>(1, work_items));
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, row_length / min_per_split));
  return splits;
}

// Grid for a kernel whose grid dimensions are walked by stride loops: z over images, y and x over blocks of the
// other two loops (want_y, want_x blocks would cover them in one pass), no more than `budget` blocks in all
// (grid_cap: fewer when the emulated build is asked for fewer).
dim3 stride_grid(int64_t budget, int64_t images, int64_t want_y, int64_t want_x) {
  budget = std::max<int64_t>(grid_cap(budget), 1);
  const int64_t z = std::min<int64_t>({std::max<int64_t>(images, 1), 65535, budget});
  const int64_t y = std::min<int64_t>({std::max<int64_t>(want_y, 1), std::max<int64_t>(budget / z, 1), 65535});
  const int64_t x = std::min<int64_t>({std::max<int64_t>(want_x, 1), std::max<int64_t>(budget / (z * y), 1),
                                       int64_t(std::numeric_limits<int>::max())});
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z));
}

// Threads per block along a row of `n` items: a power of two, at most kThreads; the rest of the block (kThreads /
// width rows) walks the other dimension.
int row_threads(int64_t n, int cap = kThreads) {
  int t = 1;
  while (t < n && t < cap) t <<= 1;
  return t;
}

// Stride loops over the grid: b over z (images), the y index over y (channels or pixels), the x index over x.
#define RESNEST_FOR_B(b, d) for (int64_t b = blockIdx.z; b < (d).B; b += gridDim.z)
#define RESNEST_FOR_Y(i, n) \
  for (int64_t i = int64_t(blockIdx.y) * blockDim.y + threadIdx.y; i < (n); i += int64_t(gridDim.y) * blockDim.y)
#define RESNEST_FOR_X(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

// ---------------------------------------------------------------------------------------------------------
// Attention weights: att[b, r, j] (radix-major [B, R, C], acc_t) = softmax over r of the cardinal-major logits
// (sigmoid when R == 1). Block (kThreads, 1): x over channels, z over images.
template <typename scalar_t>
__global__ void attention_weights_kernel(const scalar_t* __restrict__ logits,
                                         at::opmath_type<scalar_t>* __restrict__ att, Dims d) {
  using acc_t = at::opmath_type<scalar_t>;
  const int ck = static_cast<int>(d.C / d.K);
  RESNEST_FOR_B(b, d) {
    RESNEST_FOR_X(j, d.C) {
      const Attention<scalar_t, acc_t> a(logits, d, ck, b, static_cast<int>(j));
      for (int64_t r = 0; r < d.R; ++r) att[(b * d.R + r) * d.C + j] = a.weight(r);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Calls f(W, i) for the positions [begin, end) of a row whose element 0 is at flat element `offset`: W = V for
// V-vectors from the first position whose flat offset is a multiple of V, W = 1 for the scalar head before and the
// tail after them; `lane` of `lanes` threads takes every lanes-th item of each part.
template <int V, typename F>
__device__ __forceinline__ void for_range(int64_t offset, int64_t begin, int64_t end, int64_t lane, int64_t lanes,
                                          const F& f) {
  const int64_t n = ::max(end - begin, int64_t(0));
  const int64_t head = V == 1 ? 0 : ::min(n, int64_t((V - ((offset + begin) & (V - 1))) & (V - 1)));
  const int64_t first = begin + head, vectors = (n - head) / V;
  for (int64_t i = lane; i < vectors; i += lanes) f(std::integral_constant<int, V>(), first + i * V);
  if (V > 1) {
    const int64_t tail = first + vectors * V;
    for (int64_t i = lane; i < head; i += lanes) f(std::integral_constant<int, 1>(), begin + i);
    for (int64_t i = lane; i < begin + n - tail; i += lanes) f(std::integral_constant<int, 1>(), tail + i);
  }
}

// Reductions over H*W, NCHW: block (kThreads, 1); z over images, y over groups of kThreads / GROUP channels, x
// over the splits of a row; each channel's split is summed by GROUP threads, in V-vectors between a scalar head
// and tail (for_range; the launcher checks that x, dout and dx rows share one phase modulo V). All the threads of
// a block run the same iterations (group_sum synchronises the block).
// MODE 0 (pool):     partial[b, s, j]    = sum_r sum_hw x[b, r*C + j, hw]
// MODE 1 (backward): partial[b, s, r, j] = sum_hw dout[b, j, hw] * x[b, r*C + j, hw], and dx = att_r * dout.

template <int MODE, int GROUP, int V, typename scalar_t, typename Reader>
__global__ void reduce_nchw_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dout,
                                   const at::opmath_type<scalar_t>* __restrict__ att, scalar_t* __restrict__ dx,
                                   at::opmath_type<scalar_t>* __restrict__ partial, Dims d, int64_t splits,
                                   int64_t chunk, Reader reader) {
  using acc_t = at::opmath_type<scalar_t>;
  RESNEST_SHARED(acc_t, shared, kThreads / 32);
  constexpr int kGroups = kThreads / GROUP;
  const int lane = threadIdx.x % GROUP;
  RESNEST_FOR_B(b, d) {
    for (int64_t j0 = int64_t(blockIdx.y) * kGroups; j0 < d.C; j0 += int64_t(gridDim.y) * kGroups) {
      for (int64_t s = blockIdx.x; s < splits; s += gridDim.x) {
        const int64_t j = j0 + threadIdx.x / GROUP;
        const bool active = j < d.C;
        const int64_t row = b * d.C + j;
        const int64_t begin = s * chunk, end = active ? ::min(d.HW, begin + chunk) : begin;
        acc_t acc = 0;
        for (int64_t r = 0; r < d.R; ++r) {
          const int64_t xrow = ((b * d.R + r) * d.C + j) * d.HW;
          const auto u = reader.channel(active ? r * d.C + j : 0);
          if (MODE == 0) {
            for_range<V>(xrow, begin, end, lane, GROUP, [&](auto width, int64_t i) {
              constexpr int W = decltype(width)::value;
              const Pack<scalar_t, W> xv = load_pack<W>(x + xrow + i);
#pragma unroll
              for (int v = 0; v < W; ++v) acc += u(xv.v[v]);
            });
          } else {
            const scalar_t* pg = dout + row * d.HW;
            // dx == nullptr: only the logits gradient is wanted (split_attention_logits_backward).
            scalar_t* pdx = dx != nullptr ? dx + xrow : nullptr;
            const acc_t a = active && pdx != nullptr ? att[(b * d.R + r) * d.C + j] : acc_t(0);
            for_range<V>(xrow, begin, end, lane, GROUP, [&](auto width, int64_t i) {
              constexpr int W = decltype(width)::value;
              const Pack<scalar_t, W> xv = load_pack<W>(x + xrow + i);
              const Pack<scalar_t, W> gv = load_pack<W>(pg + i);
              Pack<scalar_t, W> o;
#pragma unroll
              for (int v = 0; v < W; ++v) {
                const acc_t g = static_cast<acc_t>(gv.v[v]);
                acc += g * u(xv.v[v]);
                o.v[v] = static_cast<scalar_t>(a * g);
              }
              if (pdx != nullptr) store_pack<W>(pdx + i, o);
            });
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
  }
}

// Reductions over H*W, channels_last: block (TX, TY) covers TX*V channels of one image and one split of the
// pixels; thread (tx, ty) walks pixels ty, ty + TY, ... of the split. Partial layouts as in the NCHW kernel.
template <int MODE, int V, typename scalar_t, typename Reader>
__global__ void reduce_nhwc_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dout,
                                   const at::opmath_type<scalar_t>* __restrict__ att, scalar_t* __restrict__ dx,
                                   at::opmath_type<scalar_t>* __restrict__ partial, Dims d, int64_t splits,
                                   int64_t chunk, Reader reader) {
  using Channel = typename Reader::Channel;
  using acc_t = at::opmath_type<scalar_t>;
  RESNEST_DYNAMIC_SHARED(acc_t, smem);  // [TY][TX * V]
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
            for (int v = 0; v < V; ++v) acc[v] += reader.channel(r * d.C + j0 + v)(xv.v[v]);
          }
        }
      } else {
        acc_t a[V];
#pragma unroll
        for (int v = 0; v < V; ++v) a[v] = dx != nullptr ? att[(b * d.R + ro) * d.C + j0 + v] : acc_t(0);
        Channel u[V];
#pragma unroll
        for (int v = 0; v < V; ++v) u[v] = reader.channel(ro * d.C + j0 + v);
        for (int64_t hw = begin + ty; hw < end; hw += TY) {
          const int64_t pix = b * d.HW + hw;
          const Pack<scalar_t, V> gv = load_pack<V>(dout + pix * d.C + j0);
          const Pack<scalar_t, V> xv = load_pack<V>(x + pix * nrc + ro * d.C + j0);
          Pack<scalar_t, V> o;
#pragma unroll
          for (int v = 0; v < V; ++v) {
            const acc_t g = static_cast<acc_t>(gv.v[v]);
            acc[v] += g * u[v](xv.v[v]);
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

// gap[b, j] = sum_s partial[b, s, j] / HW. Block (kThreads, 1): x over channels, z over images.
template <typename scalar_t>
__global__ void pool_finish_kernel(const at::opmath_type<scalar_t>* __restrict__ partial, scalar_t* __restrict__ gap,
                                   Dims d, int64_t splits) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(d.HW);
  RESNEST_FOR_B(b, d) {
    RESNEST_FOR_X(j, d.C) {
      acc_t total = 0;
      for (int64_t s = 0; s < splits; ++s) total += partial[(b * splits + s) * d.C + j];
      gap[b * d.C + j] = static_cast<scalar_t>(total * inv_hw);
    }
  }
}

// grad_logits (cardinal-major) from ds[b, r, j] = sum_s partial[b, s, r, j] through the softmax Jacobian
// da_r = s_r * (ds_r - sum_r' s_r' ds_r'), or the sigmoid's s * (1 - s) * ds when R == 1; s = att.
// Block (kThreads, 1): x over channels, z over images.
template <typename scalar_t>
__global__ void logits_grad_kernel(const at::opmath_type<scalar_t>* __restrict__ partial,
                                   const at::opmath_type<scalar_t>* __restrict__ att,
                                   scalar_t* __restrict__ dlogits, Dims d, int64_t splits) {
  using acc_t = at::opmath_type<scalar_t>;
  const int ck = static_cast<int>(d.C / d.K);
  RESNEST_FOR_B(b, d) {
    RESNEST_FOR_X(j, d.C) {
      const int k = static_cast<int>(j) / ck, c = static_cast<int>(j) - k * ck;
      acc_t dot = 0;
      for (int64_t r = 0; r < d.R; ++r) {
        acc_t ds = 0;
        for (int64_t s = 0; s < splits; ++s) ds += partial[((b * splits + s) * d.R + r) * d.C + j];
        dot += att[(b * d.R + r) * d.C + j] * ds;
      }
      for (int64_t r = 0; r < d.R; ++r) {
        acc_t ds = 0;
        for (int64_t s = 0; s < splits; ++s) ds += partial[((b * splits + s) * d.R + r) * d.C + j];
        const acc_t w = att[(b * d.R + r) * d.C + j];
        const acc_t da = d.R == 1 ? ds * w * (acc_t(1) - w) : w * (ds - dot);
        dlogits[b * d.R * d.C + int64_t(k) * d.R * ck + r * ck + c] = static_cast<scalar_t>(da);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Elementwise kernels.
//
// NCHW: block (TX, TY); z over images, y over channels j, x over the positions of a row. A row starting at flat
// element `offset` is split into a scalar head up to the next multiple of V, V-vectors and a scalar tail; every
// operand's rows share offset's phase modulo V (the launcher checks C*H*W % V == 0). f(W, hw) handles W
// elements from row position hw (W = V or 1).
template <int V, typename F>
__device__ __forceinline__ void for_row(int64_t offset, int64_t n, const F& f) {
  const int64_t head = V == 1 ? 0 : ::min(n, int64_t((V - (offset & (V - 1))) & (V - 1)));
  const int64_t vectors = (n - head) / V;
  RESNEST_FOR_X(i, vectors) f(std::integral_constant<int, V>(), head + i * V);
  if (V > 1) {
    const int64_t tail = head + vectors * V;
    RESNEST_FOR_X(i, head) f(std::integral_constant<int, 1>(), i);
    RESNEST_FOR_X(i, n - tail) f(std::integral_constant<int, 1>(), tail + i);
  }
}

// out[b, j, hw] = sum_r att[b, r, j] * x[b, r*C + j, hw]
template <int V, typename scalar_t, typename Reader>
__global__ void combine_nchw_kernel(const scalar_t* __restrict__ x, const at::opmath_type<scalar_t>* __restrict__ att,
                                    scalar_t* __restrict__ out, Dims d, Reader reader) {
  using acc_t = at::opmath_type<scalar_t>;
  RESNEST_FOR_B(b, d) {
    RESNEST_FOR_Y(j, d.C) {
      const int64_t orow = (b * d.C + j) * d.HW;
      const scalar_t* xrow = x + (b * d.R * d.C + j) * d.HW;  // r = 0; row r is r*C*HW further
      const acc_t* arow = att + b * d.R * d.C + j;             // att of r at arow[r * C]
      for_row<V>(orow, d.HW, [&](auto width, int64_t hw) {
        constexpr int W = decltype(width)::value;
        acc_t acc[W];
#pragma unroll
        for (int v = 0; v < W; ++v) acc[v] = 0;
#pragma unroll 2  // two x loads in flight (R = 2 in ResNeSt) without the registers of a deeper unroll
        for (int64_t r = 0; r < d.R; ++r) {
          const acc_t a = arow[r * d.C];
          const auto u = reader.channel(r * d.C + j);
          const Pack<scalar_t, W> xv = load_pack<W>(xrow + r * d.C * d.HW + hw);
#pragma unroll
          for (int v = 0; v < W; ++v) acc[v] += a * u(xv.v[v]);
        }
        Pack<scalar_t, W> o;
#pragma unroll
        for (int v = 0; v < W; ++v) o.v[v] = static_cast<scalar_t>(acc[v]);
        store_pack<W>(out + orow + hw, o);
      });
    }
  }
}

// dx[b, r*C + j, hw] = att[b, r, j] * dout[b, j, hw] + dgap[b, j] / HW; dout is read once for the R outputs.
template <int V, typename scalar_t>
__global__ void input_backward_nchw_kernel(const scalar_t* __restrict__ dout,
                                           const at::opmath_type<scalar_t>* __restrict__ att,
                                           const at::opmath_type<scalar_t>* __restrict__ dgap,
                                           scalar_t* __restrict__ dx, Dims d) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(d.HW);
  RESNEST_FOR_B(b, d) {
    RESNEST_FOR_Y(j, d.C) {
      const int64_t grow = (b * d.C + j) * d.HW;
      scalar_t* dxrow = dx + (b * d.R * d.C + j) * d.HW;  // r = 0; row r is r*C*HW further
      const acc_t* arow = att + b * d.R * d.C + j;
      const acc_t g = dgap[b * d.C + j] * inv_hw;
      for_row<V>(grow, d.HW, [&](auto width, int64_t hw) {
        constexpr int W = decltype(width)::value;
        const Pack<scalar_t, W> gv = load_pack<W>(dout + grow + hw);
#pragma unroll 1  // the loop body only stores (att comes from cache): unrolling buys no loads in flight
        for (int64_t r = 0; r < d.R; ++r) {
          const acc_t a = arow[r * d.C];
          Pack<scalar_t, W> o;
#pragma unroll
          for (int v = 0; v < W; ++v) o.v[v] = static_cast<scalar_t>(a * static_cast<acc_t>(gv.v[v]) + g);
          store_pack<W>(dxrow + r * d.C * d.HW + hw, o);
        }
      });
    }
  }
}

// channels_last: block (TX, TY); z over images, y over pixels, x over groups of V channels (V divides C).
// out[b, hw, j] = sum_r att[b, r, j] * x[b, hw, r*C + j]
template <int V, typename scalar_t, typename Reader>
__global__ void combine_nhwc_kernel(const scalar_t* __restrict__ x, const at::opmath_type<scalar_t>* __restrict__ att,
                                    scalar_t* __restrict__ out, Dims d, Reader reader) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t groups = d.C / V;
  RESNEST_FOR_B(b, d) {
    RESNEST_FOR_Y(hw, d.HW) {
      const int64_t pix = b * d.HW + hw;
      RESNEST_FOR_X(q, groups) {
        const int64_t j = q * V;
        acc_t acc[V];
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] = 0;
        for (int64_t r = 0; r < d.R; ++r) {
          const Pack<acc_t, V> a = load_pack<V>(att + (b * d.R + r) * d.C + j);
          const Pack<scalar_t, V> xv = load_pack<V>(x + (pix * d.R + r) * d.C + j);
#pragma unroll
          for (int v = 0; v < V; ++v) acc[v] += a.v[v] * reader.channel(r * d.C + j + v)(xv.v[v]);
        }
        Pack<scalar_t, V> o;
#pragma unroll
        for (int v = 0; v < V; ++v) o.v[v] = static_cast<scalar_t>(acc[v]);
        store_pack<V>(out + pix * d.C + j, o);
      }
    }
  }
}

// dx[b, hw, r*C + j] = att[b, r, j] * dout[b, hw, j] + dgap[b, j] / HW; dout is read once for the R outputs.
template <int V, typename scalar_t>
__global__ void input_backward_nhwc_kernel(const scalar_t* __restrict__ dout,
                                           const at::opmath_type<scalar_t>* __restrict__ att,
                                           const at::opmath_type<scalar_t>* __restrict__ dgap,
                                           scalar_t* __restrict__ dx, Dims d) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(d.HW);
  const int64_t groups = d.C / V;
  RESNEST_FOR_B(b, d) {
    RESNEST_FOR_Y(hw, d.HW) {
      const int64_t pix = b * d.HW + hw;
      RESNEST_FOR_X(q, groups) {
        const int64_t j = q * V;
        acc_t g[V];
#pragma unroll
        for (int v = 0; v < V; ++v) g[v] = dgap[b * d.C + j + v] * inv_hw;  // dgap may be unaligned: scalar loads
        const Pack<scalar_t, V> gv = load_pack<V>(dout + pix * d.C + j);
        const acc_t* a_r = att + b * d.R * d.C + j;  // att and dx of r = 0; those of r + 1 are C further
        scalar_t* dx_r = dx + pix * d.R * d.C + j;
#pragma unroll 1  // as in the NCHW kernel
        for (int64_t r = 0; r < d.R; ++r, a_r += d.C, dx_r += d.C) {
          const Pack<acc_t, V> a = load_pack<V>(a_r);
          Pack<scalar_t, V> o;
#pragma unroll
          for (int v = 0; v < V; ++v) o.v[v] = static_cast<scalar_t>(a.v[v] * static_cast<acc_t>(gv.v[v]) + g[v]);
          store_pack<V>(dx_r, o);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// The backward of the split-attention tail after its BatchNorm + ReLU, reading x and grad_out only
// (split_attention_norm_backward_*; formulas in split_attention.cpp). u = relu_affine(x), mask = !(u <= 0) (the
// BatchNorm backward's mask), xc = x - mean.

// Per-channel constants of the reduction: the affine map and the mean.
template <typename acc_t>
struct NormGradTable {
  const acc_t* scale;  // [R*C] (affine_table)
  const acc_t* shift;
  const acc_t* mean;
};

// Adds the five terms of element x (output gradient g) to acc: dout * u, then mask * (dout, dout * xc, 1, xc).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void add_norm_terms(scalar_t x, acc_t g, acc_t scale, acc_t shift, acc_t mean,
                                               acc_t* acc) {
  const acc_t u = relu_affine<scalar_t, acc_t>(x, scale, shift);
  const acc_t pass = u <= acc_t(0) ? acc_t(0) : acc_t(1);
  const acc_t xc = static_cast<acc_t>(x) - mean;
  acc[0] += g * u;
  acc[1] += pass * g;
  acc[2] += pass * g * xc;
  acc[3] += pass;
  acc[4] += pass * xc;
}

// NCHW, launched as reduce_nchw_kernel: partial[b, s, q, r, j] (q < 5) = sum over split s of row (b, r*C + j).
template <int GROUP, int V, typename scalar_t>
__global__ void norm_reduce_nchw_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dout,
                                        NormGradTable<at::opmath_type<scalar_t>> table,
                                        at::opmath_type<scalar_t>* __restrict__ partial, Dims d, int64_t splits,
                                        int64_t chunk) {
  using acc_t = at::opmath_type<scalar_t>;
  RESNEST_SHARED(acc_t, shared, kThreads / 32);
  constexpr int kGroups = kThreads / GROUP;
  const int lane = threadIdx.x % GROUP;
  RESNEST_FOR_B(b, d) {
    for (int64_t j0 = int64_t(blockIdx.y) * kGroups; j0 < d.C; j0 += int64_t(gridDim.y) * kGroups) {
      for (int64_t s = blockIdx.x; s < splits; s += gridDim.x) {
        const int64_t j = j0 + threadIdx.x / GROUP;
        const bool active = j < d.C;
        const int64_t begin = s * chunk, end = active ? ::min(d.HW, begin + chunk) : begin;
        const scalar_t* pg = dout + (b * d.C + j) * d.HW;
        for (int64_t r = 0; r < d.R; ++r) {
          const int64_t xrow = ((b * d.R + r) * d.C + j) * d.HW;
          const int64_t c = active ? r * d.C + j : 0;
          const acc_t scale = table.scale[c], shift = table.shift[c], mean = table.mean[c];
          acc_t acc[5] = {0, 0, 0, 0, 0};
          for_range<V>(xrow, begin, end, lane, GROUP, [&](auto width, int64_t i) {
            constexpr int W = decltype(width)::value;
            const Pack<scalar_t, W> xv = load_pack<W>(x + xrow + i);
            const Pack<scalar_t, W> gv = load_pack<W>(pg + i);
#pragma unroll
            for (int v = 0; v < W; ++v) add_norm_terms(xv.v[v], static_cast<acc_t>(gv.v[v]), scale, shift, mean, acc);
          });
#pragma unroll
          for (int q = 0; q < 5; ++q) {
            const acc_t total = group_sum<GROUP>(acc[q], shared);
            if (lane == 0 && active) partial[(((b * splits + s) * 5 + q) * d.R + r) * d.C + j] = total;
          }
        }
      }
    }
  }
}

// channels_last, launched as reduce_nhwc_kernel (block (TX, TY) over TX*V channels and one split of the pixels).
template <int V, typename scalar_t>
__global__ void norm_reduce_nhwc_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dout,
                                        NormGradTable<at::opmath_type<scalar_t>> table,
                                        at::opmath_type<scalar_t>* __restrict__ partial, Dims d, int64_t splits,
                                        int64_t chunk) {
  using acc_t = at::opmath_type<scalar_t>;
  RESNEST_DYNAMIC_SHARED(acc_t, smem);  // [TY][TX * V]
  const int tx = threadIdx.x, ty = threadIdx.y, TX = blockDim.x, TY = blockDim.y;
  const int64_t j0 = (int64_t(blockIdx.x) * TX + tx) * V;
  const int64_t s = blockIdx.y, b = blockIdx.z;
  const bool active = j0 < d.C;
  const int64_t begin = s * chunk, end = ::min(d.HW, begin + chunk);
  const int64_t nrc = d.R * d.C;
  for (int64_t r = 0; r < d.R; ++r) {
    acc_t acc[V][5];
    acc_t scale[V], shift[V], mean[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int64_t c = active ? r * d.C + j0 + v : 0;
      scale[v] = table.scale[c];
      shift[v] = table.shift[c];
      mean[v] = table.mean[c];
#pragma unroll
      for (int q = 0; q < 5; ++q) acc[v][q] = 0;
    }
    if (active) {
      for (int64_t hw = begin + ty; hw < end; hw += TY) {
        const int64_t pix = b * d.HW + hw;
        const Pack<scalar_t, V> gv = load_pack<V>(dout + pix * d.C + j0);
        const Pack<scalar_t, V> xv = load_pack<V>(x + pix * nrc + r * d.C + j0);
#pragma unroll
        for (int v = 0; v < V; ++v) {
          add_norm_terms(xv.v[v], static_cast<acc_t>(gv.v[v]), scale[v], shift[v], mean[v], acc[v]);
        }
      }
    }
    for (int q = 0; q < 5; ++q) {
      __syncthreads();  // smem may still be read from the previous sum
#pragma unroll
      for (int v = 0; v < V; ++v) smem[ty * TX * V + tx * V + v] = acc[v][q];
      __syncthreads();
      if (ty == 0 && active) {
        for (int v = 0; v < V; ++v) {
          acc_t total = 0;
          for (int y = 0; y < TY; ++y) total += smem[y * TX * V + tx * V + v];
          partial[(((b * splits + s) * 5 + q) * d.R + r) * d.C + j0 + v] = total;
        }
      }
    }
  }
}

// The splits summed in order: ds -> the logits gradient (as logits_grad_kernel), the four sums -> sums[q, b, c].
// Block (kThreads, 1): x over channels, z over images.
template <typename scalar_t>
__global__ void norm_reduce_finish_kernel(const at::opmath_type<scalar_t>* __restrict__ partial,
                                          const at::opmath_type<scalar_t>* __restrict__ att,
                                          scalar_t* __restrict__ dlogits, at::opmath_type<scalar_t>* __restrict__ sums,
                                          Dims d, int64_t splits) {
  using acc_t = at::opmath_type<scalar_t>;
  const int ck = static_cast<int>(d.C / d.K);
  const int64_t plane = d.B * d.R * d.C;
  RESNEST_FOR_B(b, d) {
    RESNEST_FOR_X(j, d.C) {
      const int k = static_cast<int>(j) / ck, c = static_cast<int>(j) - k * ck;
      auto total = [&](int q, int64_t r) {
        acc_t t = 0;
        for (int64_t s = 0; s < splits; ++s) t += partial[(((b * splits + s) * 5 + q) * d.R + r) * d.C + j];
        return t;
      };
      acc_t dot = 0;
      for (int64_t r = 0; r < d.R; ++r) dot += att[(b * d.R + r) * d.C + j] * total(0, r);
      for (int64_t r = 0; r < d.R; ++r) {
        const acc_t ds = total(0, r);
        const acc_t w = att[(b * d.R + r) * d.C + j];
        const acc_t da = d.R == 1 ? ds * w * (acc_t(1) - w) : w * (ds - dot);
        dlogits[b * d.R * d.C + int64_t(k) * d.R * ck + r * ck + c] = static_cast<scalar_t>(da);
        for (int q = 1; q < 5; ++q) sums[(q - 1) * plane + (b * d.R + r) * d.C + j] = total(q, r);
      }
    }
  }
}

// sum_dy[c] = sum_b att * sums[0] + g * sums[2], sum_dy_xhat[c] = invstd_c * sum_b att * sums[1] + g * sums[3],
// g = grad_gap[b, c % C] / HW; c over the R*C channels (att [B, R, C] radix-major, i.e. [B, R*C]).
template <typename acc_t>
__global__ void norm_sums_kernel(const acc_t* __restrict__ sums, const acc_t* __restrict__ att,
                                 const acc_t* __restrict__ grad_gap, const acc_t* __restrict__ var, double eps,
                                 Dims d, acc_t* __restrict__ sum_dy, acc_t* __restrict__ sum_dy_xhat) {
  const int64_t rc = d.R * d.C, plane = d.B * rc;
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(d.HW);
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < rc; c += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = c % d.C;
    acc_t s1 = 0, s2 = 0;
    for (int64_t b = 0; b < d.B; ++b) {
      const int64_t i = b * rc + c;
      const acc_t a = att[i], g = grad_gap[b * d.C + j] * inv_hw;
      s1 += a * sums[i] + g * sums[2 * plane + i];
      s2 += a * sums[plane + i] + g * sums[3 * plane + i];
    }
    sum_dy[c] = s1;
    sum_dy_xhat[c] = s2 / ::sqrt(var[c] + static_cast<acc_t>(eps));
  }
}

// Per-channel constants of the input gradient, [6, R*C]: scale, shift (AffineMap::at), mean, wi = weight * invstd,
// k1 = sum_dy / count, k2 = sum_dy_xhat * invstd / count; grad_x = wi * (grad_u - (k1 + xc * k2)).
template <typename acc_t>
__global__ void norm_input_table_kernel(AffineMap<acc_t> affine, const acc_t* __restrict__ sum_dy,
                                        const acc_t* __restrict__ sum_dy_xhat, const acc_t* __restrict__ count,
                                        int64_t channels, acc_t* __restrict__ table) {
  const acc_t inv_count = acc_t(1) / ::max(count[0], acc_t(1));
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < channels; c += int64_t(gridDim.x) * blockDim.x) {
    const acc_t invstd = affine.invstd(c);
    acc_t scale, shift;
    affine.at(c, invstd, scale, shift);
    table[c] = scale;
    table[channels + c] = shift;
    table[2 * channels + c] = affine.mean[c];
    table[3 * channels + c] = (affine.weight != nullptr ? affine.weight[c] : acc_t(1)) * invstd;
    table[4 * channels + c] = sum_dy[c] * inv_count;
    table[5 * channels + c] = sum_dy_xhat[c] * invstd * inv_count;
  }
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t norm_input_grad(scalar_t x, acc_t a, acc_t g, acc_t gap, const acc_t* table,
                                                 int64_t channels, int64_t c) {
  const acc_t u = relu_affine<scalar_t, acc_t>(x, table[c], table[channels + c]);
  const acc_t du = u <= acc_t(0) ? acc_t(0) : a * g + gap;
  const acc_t xc = static_cast<acc_t>(x) - table[2 * channels + c];
  return table[3 * channels + c] * (du - (table[4 * channels + c] + xc * table[5 * channels + c]));
}

// NCHW, launched as input_backward_nchw_kernel: dout is read once for the R rows of grad_x it feeds.
template <int V, typename scalar_t>
__global__ void norm_input_nchw_kernel(const scalar_t* __restrict__ dout, const scalar_t* __restrict__ x,
                                       const at::opmath_type<scalar_t>* __restrict__ att,
                                       const at::opmath_type<scalar_t>* __restrict__ dgap,
                                       const at::opmath_type<scalar_t>* __restrict__ table,
                                       scalar_t* __restrict__ dx, Dims d) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(d.HW);
  const int64_t rc = d.R * d.C;
  RESNEST_FOR_B(b, d) {
    RESNEST_FOR_Y(j, d.C) {
      const int64_t grow = (b * d.C + j) * d.HW;
      const int64_t xrow0 = (b * rc + j) * d.HW;  // r = 0; row r is r*C*HW further
      const acc_t* arow = att + b * rc + j;
      const acc_t gap = dgap[b * d.C + j] * inv_hw;
      for_row<V>(grow, d.HW, [&](auto width, int64_t hw) {
        constexpr int W = decltype(width)::value;
        const Pack<scalar_t, W> gv = load_pack<W>(dout + grow + hw);
#pragma unroll 1
        for (int64_t r = 0; r < d.R; ++r) {
          const acc_t a = arow[r * d.C];
          const int64_t c = r * d.C + j;
          const Pack<scalar_t, W> xv = load_pack<W>(x + xrow0 + r * d.C * d.HW + hw);
          Pack<scalar_t, W> o;
#pragma unroll
          for (int v = 0; v < W; ++v) {
            o.v[v] = static_cast<scalar_t>(norm_input_grad(xv.v[v], a, static_cast<acc_t>(gv.v[v]), gap, table, rc, c));
          }
          store_pack<W>(dx + xrow0 + r * d.C * d.HW + hw, o);
        }
      });
    }
  }
}

// channels_last, launched as input_backward_nhwc_kernel (V divides C).
template <int V, typename scalar_t>
__global__ void norm_input_nhwc_kernel(const scalar_t* __restrict__ dout, const scalar_t* __restrict__ x,
                                       const at::opmath_type<scalar_t>* __restrict__ att,
                                       const at::opmath_type<scalar_t>* __restrict__ dgap,
                                       const at::opmath_type<scalar_t>* __restrict__ table,
                                       scalar_t* __restrict__ dx, Dims d) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(d.HW);
  const int64_t groups = d.C / V, rc = d.R * d.C;
  RESNEST_FOR_B(b, d) {
    RESNEST_FOR_Y(hw, d.HW) {
      const int64_t pix = b * d.HW + hw;
      RESNEST_FOR_X(q, groups) {
        const int64_t j = q * V;
        const Pack<scalar_t, V> gv = load_pack<V>(dout + pix * d.C + j);
#pragma unroll 1
        for (int64_t r = 0; r < d.R; ++r) {
          const Pack<acc_t, V> a = load_pack<V>(att + b * rc + r * d.C + j);
          const Pack<scalar_t, V> xv = load_pack<V>(x + pix * rc + r * d.C + j);
          Pack<scalar_t, V> o;
#pragma unroll
          for (int v = 0; v < V; ++v) {
            const acc_t gap = dgap[b * d.C + j + v] * inv_hw;  // dgap may be unaligned: scalar loads
            o.v[v] = static_cast<scalar_t>(
                norm_input_grad(xv.v[v], a.v[v], static_cast<acc_t>(gv.v[v]), gap, table, rc, r * d.C + j + v));
          }
          store_pack<V>(dx + pix * rc + r * d.C + j, o);
        }
      }
    }
  }
}

#undef RESNEST_FOR_B
#undef RESNEST_FOR_Y
#undef RESNEST_FOR_X

// ---------------------------------------------------------------------------------------------------------
// Launchers

Dims dims_of(const at::Tensor& x, int64_t radix, int64_t cardinality) {
  return {x.size(0), radix, x.size(1) / radix, cardinality, x.size(2) * x.size(3)};
}

bool is_channels_last(const at::Tensor& t) { return activation_format(t) == at::MemoryFormat::ChannelsLast; }

// Launches a kernel whose block is (kThreads, 1) with x over channels and z over images: the weights and finish
// kernels.
template <typename Kernel, typename... Args>
void launch_per_channel(Kernel kernel, const Dims& d, Args... args) {
  const dim3 grid = stride_grid(resident_blocks(kernel, kThreads), d.B, 1, (d.C + kThreads - 1) / kThreads);
  launch(kernel, grid, kThreads, 0, current_stream(), args...);
}

// att [B, R, C] in the accumulation type (fp32, fp64 for double) from the logits.
template <typename scalar_t>
at::Tensor attention_weights(const at::Tensor& logits, const Dims& d) {
  TORCH_CHECK(d.C <= std::numeric_limits<int>::max(), "split attention: C must fit in 32 bits, got ", d.C);
  const auto acc_dtype = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor att = at::empty({d.B, d.R, d.C}, logits.options().dtype(acc_dtype));
  launch_per_channel(attention_weights_kernel<scalar_t>, d, logits.const_data_ptr<scalar_t>(),
                     att.mutable_data_ptr<at::opmath_type<scalar_t>>(), d);
  return att;
}

// Block and grid of an elementwise kernel: NCHW rows of H*W positions (in vectors of v) over x, channels over y;
// channels_last groups of v channels over x, pixels over y; images over z.
template <typename Kernel>
std::tuple<dim3, dim3> elementwise_launch(Kernel kernel, const Dims& d, bool channels_last, int v) {
  const int64_t along_x = channels_last ? d.C / v : (d.HW + v - 1) / v;
  const int64_t along_y = channels_last ? d.HW : d.C;
  const int tx = row_threads(along_x), ty = kThreads / tx;
  const dim3 grid = stride_grid(resident_blocks(kernel, kThreads), d.B, (along_y + ty - 1) / ty,
                                (along_x + tx - 1) / tx);
  return {grid, dim3(tx, ty)};
}

template <typename Kernel, typename... Args>
void launch_elementwise(Kernel kernel, const Dims& d, bool channels_last, int v, Args... args) {
  const auto [grid, block] = elementwise_launch(kernel, d, channels_last, v);
  launch(kernel, grid, block, 0, current_stream(), args...);
}

// Whether the elementwise kernels may use V-vectors: 16-byte aligned bases and, channels_last, V dividing C;
// NCHW, C*H*W a multiple of V, so that the rows of every operand share one phase modulo V.
bool vectorisable(const Dims& d, bool channels_last, int v, std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs) {
    if (!aligned16(p)) return false;
  }
  return channels_last ? d.C % v == 0 : (d.C * d.HW) % v == 0;
}

// The combine kernel for the layout, vectorised when `vec` (vectorisable).
template <typename scalar_t, typename Reader>
void launch_combine(const scalar_t* px, const at::opmath_type<scalar_t>* pa, scalar_t* po, const Dims& d, bool cl,
                    bool vec, const Reader& reader) {
  constexpr int V = vec_size<scalar_t>();
  if (cl && vec) launch_elementwise(combine_nhwc_kernel<V, scalar_t, Reader>, d, cl, V, px, pa, po, d, reader);
  else if (cl) launch_elementwise(combine_nhwc_kernel<1, scalar_t, Reader>, d, cl, 1, px, pa, po, d, reader);
  else if (vec) launch_elementwise(combine_nchw_kernel<V, scalar_t, Reader>, d, cl, V, px, pa, po, d, reader);
  else launch_elementwise(combine_nchw_kernel<1, scalar_t, Reader>, d, cl, 1, px, pa, po, d, reader);
}

// Runs the MODE reduction (0: pool, 1: combine backward, 2: the norm backward's, Reader a NormGradTable); returns the fp32 partial sums and the number of splits.
template <int MODE, typename scalar_t, typename Reader>
std::tuple<at::Tensor, int64_t> launch_reduction(const at::Tensor& x, const at::Tensor& dout, const at::Tensor& att,
                                                 const at::Tensor& dx, const Dims& d, bool channels_last,
                                                 const Reader& reader) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = vec_size<scalar_t>();
  const cudaStream_t stream = current_stream();
  const auto acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t outputs = MODE == 0 ? 1 : MODE == 1 ? d.R : 5 * d.R;
  const scalar_t* px = x.const_data_ptr<scalar_t>();
  const scalar_t* pg = MODE >= 1 ? dout.const_data_ptr<scalar_t>() : nullptr;
  const acc_t* pa = MODE == 1 ? att.const_data_ptr<acc_t>() : nullptr;
  scalar_t* pdx = MODE == 1 && dx.defined() ? dx.mutable_data_ptr<scalar_t>() : nullptr;
  bool vec = aligned16(px) && (MODE == 0 || (aligned16(pg) && aligned16(pdx)));
  if (!channels_last) {
    // Rows of one phase modulo V: MODE 0 reads x rows alone (each finds its own phase); MODE 1 and 2 pair x, dout
    // (and dx) rows, whose offsets differ by multiples of C*H*W.
    vec = vec && (MODE == 0 || (d.C * d.HW) % V == 0);
    // Short rows: a warp per row. Long rows: a block per (row, split).
    const bool small = d.HW <= 2048;
    const int group = small ? 32 : kThreads;
    const int64_t splits = small ? 1 : reduction_splits(d.B * d.C, d.HW, 4 * kThreads * V);
    const int64_t chunk = ((d.HW + splits - 1) / splits + V - 1) / V * V;
    at::Tensor partial = at::empty({d.B, splits, outputs, d.C}, x.options().dtype(acc_dtype));
    const int64_t groups = kThreads / group;
    acc_t* pp = partial.mutable_data_ptr<acc_t>();
#define RESNEST_LAUNCH_NCHW(GROUP, VEC)                                                                         \
  do {                                                                                                           \
    if constexpr (MODE == 2) {                                                                                   \
      auto* kernel = norm_reduce_nchw_kernel<GROUP, VEC, scalar_t>;                                              \
      const dim3 grid = stride_grid(resident_blocks(kernel, kThreads), d.B, (d.C + groups - 1) / groups, splits); \
      launch(kernel, grid, kThreads, 0, stream, px, pg, reader, pp, d, splits, chunk);                           \
    } else {                                                                                                     \
      auto* kernel = reduce_nchw_kernel<MODE, GROUP, VEC, scalar_t, Reader>;                                     \
      const dim3 grid = stride_grid(resident_blocks(kernel, kThreads), d.B, (d.C + groups - 1) / groups, splits); \
      launch(kernel, grid, kThreads, 0, stream, px, pg, pa, pdx, pp, d, splits, chunk, reader);                  \
    }                                                                                                            \
  } while (0)
    if (small && vec) RESNEST_LAUNCH_NCHW(32, V);
    else if (small) RESNEST_LAUNCH_NCHW(32, 1);
    else if (vec) RESNEST_LAUNCH_NCHW(kThreads, V);
    else RESNEST_LAUNCH_NCHW(kThreads, 1);
#undef RESNEST_LAUNCH_NCHW
    return {partial, splits};
  }
  vec = vec && d.C % V == 0;
  const int v = vec ? V : 1;
  const int64_t cols = (d.C + v - 1) / v;
  const int tx = row_threads(cols, 32);
  const int ty = kThreads / tx;
  const int64_t col_blocks = (cols + tx - 1) / tx;
  const int64_t splits = reduction_splits(col_blocks * d.B, d.HW, 4 * ty);
  const int64_t chunk = (d.HW + splits - 1) / splits;
  at::Tensor partial = at::empty({d.B, splits, outputs, d.C}, x.options().dtype(acc_dtype));
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(splits), static_cast<unsigned>(d.B));
  const dim3 block(tx, ty);
  const size_t smem = sizeof(acc_t) * kThreads * v;
  acc_t* pp = partial.mutable_data_ptr<acc_t>();
  if constexpr (MODE == 2) {
    if (vec) {
      launch(norm_reduce_nhwc_kernel<V, scalar_t>, grid, block, smem, stream, px, pg, reader, pp, d, splits, chunk);
    } else {
      launch(norm_reduce_nhwc_kernel<1, scalar_t>, grid, block, smem, stream, px, pg, reader, pp, d, splits, chunk);
    }
  } else if (vec) {
    launch(reduce_nhwc_kernel<MODE, V, scalar_t, Reader>, grid, block, smem, stream, px, pg, pa, pdx, pp, d, splits,
           chunk, reader);
  } else {
    launch(reduce_nhwc_kernel<MODE, 1, scalar_t, Reader>, grid, block, smem, stream, px, pg, pa, pdx, pp, d, splits,
           chunk, reader);
  }
  return {partial, splits};
}

// The combine backward's reduction (dx written when defined) and the logits gradient.
template <typename scalar_t, typename Reader>
void combine_backward(const at::Tensor& xc, const at::Tensor& gc, const at::Tensor& lc, const at::Tensor& dx,
                      const at::Tensor& dlogits, const Dims& d, bool channels_last, const Reader& reader) {
  using acc_t = at::opmath_type<scalar_t>;
  const at::Tensor att = attention_weights<scalar_t>(lc, d);
  const auto [partial, splits] = launch_reduction<1, scalar_t>(xc, gc, att, dx, d, channels_last, reader);
  launch_per_channel(logits_grad_kernel<scalar_t>, d, partial.template const_data_ptr<acc_t>(),
                     att.const_data_ptr<acc_t>(),
                     dlogits.mutable_data_ptr<scalar_t>(), d, splits);
}

// The per-channel table of a NormRelu reader ([2, R*C] in acc_t: scale, shift) for the BatchNorm before x; the
// caller keeps the table alive while the reader is used.
template <typename scalar_t>
at::Tensor affine_table(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                        const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t channels = x.size(1);
  const at::Tensor m = mean.contiguous(), v = var.contiguous();
  const at::Tensor w = weight.has_value() ? weight->to(acc_dtype).contiguous() : at::Tensor();
  const at::Tensor b = bias.has_value() ? bias->to(acc_dtype).contiguous() : at::Tensor();
  at::Tensor table = at::empty({2, channels}, x.options().dtype(acc_dtype));
  if (channels == 0) return table;
  const AffineMap<acc_t> affine{m.const_data_ptr<acc_t>(), v.const_data_ptr<acc_t>(),
                                w.defined() ? w.const_data_ptr<acc_t>() : nullptr,
                                b.defined() ? b.const_data_ptr<acc_t>() : nullptr, eps};
  auto* kernel = affine_table_kernel<acc_t>;
  const dim3 grid = stride_grid(resident_blocks(kernel, kThreads), 1, 1, (channels + kThreads - 1) / kThreads);
  acc_t* pt = table.mutable_data_ptr<acc_t>();
  launch(kernel, grid, kThreads, 0, current_stream(), affine, channels, pt, pt + channels);
  return table;
}

template <typename scalar_t>
NormRelu<scalar_t> norm_relu(const at::Tensor& table) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* pt = table.const_data_ptr<acc_t>();
  return {pt, pt + table.size(1)};
}

}  // namespace

at::Tensor split_attention_pool_cuda(const at::Tensor& x, int64_t radix) {
  check_split_attention_input(x, radix, "split_attention_pool");
  TORCH_CHECK(x.size(0) <= 65535, "split_attention_pool: batch size must be <= 65535 on CUDA, got ", x.size(0));
  const DeviceGuard guard(x.device());
  const bool cl = is_channels_last(x);
  const at::Tensor xc = x.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const Dims d = dims_of(x, radix, 1);
  at::Tensor gap = at::empty({d.B, d.C}, x.options());
  if (gap.numel() == 0) return gap;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_pool_cuda", [&] {
    auto [partial, splits] =
        launch_reduction<0, scalar_t>(xc, at::Tensor(), at::Tensor(), at::Tensor(), d, cl, Plain<scalar_t>());
    launch_per_channel(pool_finish_kernel<scalar_t>, d, partial.const_data_ptr<at::opmath_type<scalar_t>>(),
                       gap.mutable_data_ptr<scalar_t>(), d, splits);
  });
  return gap;
}

at::Tensor split_attention_combine_cuda(const at::Tensor& x, const at::Tensor& logits, int64_t radix,
                                        int64_t cardinality) {
  check_combine_logits(x, logits, radix, cardinality, "split_attention_combine");
  const DeviceGuard guard(x.device());
  const bool cl = is_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor lc = logits.contiguous();
  const Dims d = dims_of(x, radix, cardinality);
  at::Tensor out = at::empty({d.B, d.C, x.size(2), x.size(3)}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_combine_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = vec_size<scalar_t>();
    const at::Tensor att = attention_weights<scalar_t>(lc, d);
    const scalar_t* px = xc.const_data_ptr<scalar_t>();
    const acc_t* pa = att.const_data_ptr<acc_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const bool vec = vectorisable(d, cl, V, {px, po, pa});  // the weights are loaded as vectors too
    launch_combine<scalar_t>(px, pa, po, d, cl, vec, Plain<scalar_t>());
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
  const DeviceGuard guard(x.device());
  const bool cl = is_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor gc = grad_out.to(x.scalar_type()).contiguous(fmt);
  const at::Tensor lc = logits.contiguous();
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(fmt));
  at::Tensor dlogits = at::empty(logits.sizes(), logits.options());
  if (x.numel() == 0) return {dx, dlogits};  // B == 0 or C == 0: no kernel launch
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_combine_bwd_cuda", [&] {
    combine_backward<scalar_t>(xc, gc, lc, dx, dlogits, d, cl, Plain<scalar_t>());
  });
  return {dx, dlogits};
}

at::Tensor split_attention_logits_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                               const at::Tensor& logits, int64_t radix, int64_t cardinality) {
  check_combine_logits(x, logits, radix, cardinality, "split_attention_logits_backward");
  check_grad_out(grad_out, x, radix, "split_attention_logits_backward");
  const Dims d = dims_of(x, radix, cardinality);
  TORCH_CHECK(d.B <= 65535, "split_attention_logits_backward: batch size must be <= 65535 on CUDA, got ", d.B);
  const DeviceGuard guard(x.device());
  const bool cl = is_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor gc = grad_out.to(x.scalar_type()).contiguous(fmt);
  const at::Tensor lc = logits.contiguous();
  at::Tensor dlogits = at::empty(logits.sizes(), logits.options());
  if (x.numel() == 0) return dlogits;  // B == 0 or C == 0: no kernel launch
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_logits_bwd_cuda", [&] {
    combine_backward<scalar_t>(xc, gc, lc, at::Tensor(), dlogits, d, cl, Plain<scalar_t>());
  });
  return dlogits;
}

at::Tensor split_attention_input_backward_cuda(const at::Tensor& grad_out, const at::Tensor& logits,
                                               const at::Tensor& grad_gap, int64_t radix, int64_t cardinality) {
  check_input_backward_args(grad_out, logits, grad_gap, radix, cardinality);
  const DeviceGuard guard(grad_out.device());
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
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = vec_size<scalar_t>();
    const at::Tensor att = attention_weights<scalar_t>(lc, d);
    const scalar_t* pg = gc.const_data_ptr<scalar_t>();
    const acc_t* pa = att.const_data_ptr<acc_t>();
    const acc_t* pd = dg.const_data_ptr<acc_t>();
    scalar_t* pdx = dx.mutable_data_ptr<scalar_t>();
    const bool vec = vectorisable(d, cl, V, {pg, pdx, pa});
    if (cl && vec) launch_elementwise(input_backward_nhwc_kernel<V, scalar_t>, d, cl, V, pg, pa, pd, pdx, d);
    else if (cl) launch_elementwise(input_backward_nhwc_kernel<1, scalar_t>, d, cl, 1, pg, pa, pd, pdx, d);
    else if (vec) launch_elementwise(input_backward_nchw_kernel<V, scalar_t>, d, cl, V, pg, pa, pd, pdx, d);
    else launch_elementwise(input_backward_nchw_kernel<1, scalar_t>, d, cl, 1, pg, pa, pd, pdx, d);
  });
  return dx;
}

at::Tensor split_attention_norm_pool_cuda(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                                          const std::optional<at::Tensor>& weight,
                                          const std::optional<at::Tensor>& bias, double eps, int64_t radix) {
  const char* op = "split_attention_norm_pool";
  check_split_attention_input(x, radix, op);
  check_norm_args(x, mean, var, weight, bias, eps, op);
  TORCH_CHECK(x.size(0) <= 65535, op, ": batch size must be <= 65535 on CUDA, got ", x.size(0));
  const DeviceGuard guard(x.device());
  const bool cl = is_channels_last(x);
  const at::Tensor xc = x.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const Dims d = dims_of(x, radix, 1);
  at::Tensor gap = at::empty({d.B, d.C}, x.options());
  if (gap.numel() == 0) return gap;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_norm_pool_cuda", [&] {
    const at::Tensor table = affine_table<scalar_t>(x, mean, var, weight, bias, eps);
    auto [partial, splits] = launch_reduction<0, scalar_t>(xc, at::Tensor(), at::Tensor(), at::Tensor(), d, cl,
                                                           norm_relu<scalar_t>(table));
    launch_per_channel(pool_finish_kernel<scalar_t>, d, partial.const_data_ptr<at::opmath_type<scalar_t>>(),
                       gap.mutable_data_ptr<scalar_t>(), d, splits);
  });
  return gap;
}

at::Tensor split_attention_norm_combine_cuda(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                                             const std::optional<at::Tensor>& weight,
                                             const std::optional<at::Tensor>& bias, double eps,
                                             const at::Tensor& logits, int64_t radix, int64_t cardinality) {
  const char* op = "split_attention_norm_combine";
  check_combine_logits(x, logits, radix, cardinality, op);
  check_norm_args(x, mean, var, weight, bias, eps, op);
  const DeviceGuard guard(x.device());
  const bool cl = is_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor lc = logits.contiguous();
  const Dims d = dims_of(x, radix, cardinality);
  at::Tensor out = at::empty({d.B, d.C, x.size(2), x.size(3)}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_norm_combine_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = vec_size<scalar_t>();
    const at::Tensor table = affine_table<scalar_t>(x, mean, var, weight, bias, eps);
    const at::Tensor att = attention_weights<scalar_t>(lc, d);
    const scalar_t* px = xc.const_data_ptr<scalar_t>();
    const acc_t* pa = att.const_data_ptr<acc_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    launch_combine<scalar_t>(px, pa, po, d, cl, vectorisable(d, cl, V, {px, po, pa}), norm_relu<scalar_t>(table));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> split_attention_norm_backward_reduce_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    const at::Tensor& logits, int64_t radix, int64_t cardinality) {
  const char* op = "split_attention_norm_backward_reduce";
  check_combine_logits(x, logits, radix, cardinality, op);
  check_grad_out(grad_out, x, radix, op);
  check_norm_args(x, mean, var, weight, bias, eps, op);
  const Dims d = dims_of(x, radix, cardinality);
  TORCH_CHECK(d.B <= 65535, op, ": batch size must be <= 65535 on CUDA, got ", d.B);
  const DeviceGuard guard(x.device());
  const bool cl = is_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor gc = grad_out.to(x.scalar_type()).contiguous(fmt);
  const at::Tensor lc = logits.contiguous();
  at::Tensor dlogits = at::empty(logits.sizes(), logits.options());
  at::Tensor sums = at::zeros({4, d.B, d.R * d.C}, x.options().dtype(bn_stats_dtype(x)));
  if (x.numel() == 0) {
    dlogits.zero_();
    return {dlogits, sums};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_norm_bwd_reduce_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor table = affine_table<scalar_t>(x, mean, var, weight, bias, eps);
    const at::Tensor m = mean.contiguous();
    const NormGradTable<acc_t> reader{table.const_data_ptr<acc_t>(), table.const_data_ptr<acc_t>() + d.R * d.C,
                                      m.const_data_ptr<acc_t>()};
    const at::Tensor att = attention_weights<scalar_t>(lc, d);
    const auto [partial, splits] = launch_reduction<2, scalar_t>(xc, gc, att, at::Tensor(), d, cl, reader);
    launch_per_channel(norm_reduce_finish_kernel<scalar_t>, d, partial.template const_data_ptr<acc_t>(),
                       att.const_data_ptr<acc_t>(), dlogits.mutable_data_ptr<scalar_t>(),
                       sums.mutable_data_ptr<acc_t>(), d, splits);
  });
  return {dlogits, sums};
}

std::tuple<at::Tensor, at::Tensor> split_attention_norm_backward_sums_cuda(const at::Tensor& sums,
                                                                           const at::Tensor& logits,
                                                                           const at::Tensor& grad_gap,
                                                                           const at::Tensor& var, double eps,
                                                                           int64_t radix, int64_t cardinality,
                                                                           int64_t hw) {
  check_norm_sums_args(sums, logits, grad_gap, var, eps, radix, cardinality, hw);
  const int64_t B = sums.size(1), RC = sums.size(2);
  const Dims d{B, radix, RC / radix, cardinality, hw};
  const DeviceGuard guard(sums.device());
  at::Tensor sum_dy = at::zeros({RC}, var.options()), sum_dy_xhat = at::zeros({RC}, var.options());
  if (RC == 0) return {sum_dy, sum_dy_xhat};
  const at::Tensor sc = sums.contiguous(), lc = logits.contiguous(), v = var.contiguous();
  const at::Tensor dg = grad_gap.to(var.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "split_attention_norm_bwd_sums_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor att = B > 0 ? attention_weights<scalar_t>(lc, d) : at::zeros({0}, sc.options());
    auto* kernel = norm_sums_kernel<acc_t>;
    const dim3 grid = stride_grid(resident_blocks(kernel, kThreads), 1, 1, (RC + kThreads - 1) / kThreads);
    launch(kernel, grid, kThreads, 0, current_stream(), sc.const_data_ptr<acc_t>(), att.const_data_ptr<acc_t>(),
           dg.const_data_ptr<acc_t>(), v.const_data_ptr<acc_t>(), eps, d, sum_dy.mutable_data_ptr<acc_t>(),
           sum_dy_xhat.mutable_data_ptr<acc_t>());
  });
  return {sum_dy, sum_dy_xhat};
}

at::Tensor split_attention_norm_backward_input_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    const at::Tensor& logits, const at::Tensor& grad_gap, const at::Tensor& sum_dy, const at::Tensor& sum_dy_xhat,
    const at::Tensor& count, int64_t radix, int64_t cardinality) {
  check_norm_backward_input_args(grad_out, x, mean, var, weight, bias, eps, logits, grad_gap, sum_dy, sum_dy_xhat,
                                 count, radix, cardinality);
  const Dims d = dims_of(x, radix, cardinality);
  const DeviceGuard guard(x.device());
  const bool cl = is_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor gc = grad_out.to(x.scalar_type()).contiguous(fmt);
  const at::Tensor lc = logits.contiguous();
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (x.numel() == 0) return dx;
  const auto acc_dtype = bn_stats_dtype(x);
  const at::Tensor dg = grad_gap.to(acc_dtype).contiguous();
  const at::Tensor m = mean.contiguous(), v = var.contiguous(), sdy = sum_dy.contiguous(),
                   sdx = sum_dy_xhat.contiguous(), cnt = count.contiguous();
  const at::Tensor w = weight.has_value() ? weight->to(acc_dtype).contiguous() : at::Tensor();
  const at::Tensor b = bias.has_value() ? bias->to(acc_dtype).contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_norm_bwd_input_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int V = vec_size<scalar_t>();
    const int64_t rc = d.R * d.C;
    at::Tensor table = at::empty({6, rc}, x.options().dtype(acc_dtype));
    const AffineMap<acc_t> affine{m.const_data_ptr<acc_t>(), v.const_data_ptr<acc_t>(),
                                  w.defined() ? w.const_data_ptr<acc_t>() : nullptr,
                                  b.defined() ? b.const_data_ptr<acc_t>() : nullptr, eps};
    auto* table_kernel = norm_input_table_kernel<acc_t>;
    const dim3 table_grid =
        stride_grid(resident_blocks(table_kernel, kThreads), 1, 1, (rc + kThreads - 1) / kThreads);
    launch(table_kernel, table_grid, kThreads, 0, current_stream(), affine, sdy.const_data_ptr<acc_t>(),
           sdx.const_data_ptr<acc_t>(), cnt.const_data_ptr<acc_t>(), rc, table.mutable_data_ptr<acc_t>());
    const at::Tensor att = attention_weights<scalar_t>(lc, d);
    const scalar_t* pg = gc.const_data_ptr<scalar_t>();
    const scalar_t* px = xc.const_data_ptr<scalar_t>();
    const acc_t* pa = att.const_data_ptr<acc_t>();
    const acc_t* pd = dg.const_data_ptr<acc_t>();
    const acc_t* pt = table.const_data_ptr<acc_t>();
    scalar_t* pdx = dx.mutable_data_ptr<scalar_t>();
    const bool vec = vectorisable(d, cl, V, {pg, px, pdx, pa});
    if (cl && vec) launch_elementwise(norm_input_nhwc_kernel<V, scalar_t>, d, cl, V, pg, px, pa, pd, pt, pdx, d);
    else if (cl) launch_elementwise(norm_input_nhwc_kernel<1, scalar_t>, d, cl, 1, pg, px, pa, pd, pt, pdx, d);
    else if (vec) launch_elementwise(norm_input_nchw_kernel<V, scalar_t>, d, cl, V, pg, px, pa, pd, pt, pdx, d);
    else launch_elementwise(norm_input_nchw_kernel<1, scalar_t>, d, cl, 1, pg, px, pa, pd, pt, pdx, d);
  });
  return dx;
}

RESNEST_CUDA_KERNELS(m) {
  m.impl("split_attention_norm_backward_reduce", &split_attention_norm_backward_reduce_cuda);
  m.impl("split_attention_norm_backward_sums", &split_attention_norm_backward_sums_cuda);
  m.impl("split_attention_norm_backward_input", &split_attention_norm_backward_input_cuda);
  m.impl("split_attention_norm_pool", &split_attention_norm_pool_cuda);
  m.impl("split_attention_norm_combine", &split_attention_norm_combine_cuda);
  m.impl("split_attention_logits_backward", &split_attention_logits_backward_cuda);
  m.impl("split_attention_input_backward", &split_attention_input_backward_cuda);
  m.impl("split_attention_pool", &split_attention_pool_cuda);
  m.impl("split_attention_combine", &split_attention_combine_cuda);
  m.impl("split_attention_combine_backward", &split_attention_combine_backward_cuda);
}

}  // namespace resnest_cuda
