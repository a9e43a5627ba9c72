#pragma once
// Channel-fastest RoIAlign on the GPU, shared by roi_align_cuda.cu and multi_level_roi_align_cuda.cu.
//
// With a channels_last map, the C values of one pixel are contiguous. One warp takes one output bin
// (roi, ph, pw): its lanes first compute the bin's interpolation taps once (the grid_h sample rows and grid_w sample
// columns are separable: grid_h + grid_w AxisTaps, offsets already multiplied by the map's H and W strides) into
// the warp's slice of shared memory, then each lane loops over channels c = lane, lane + 32, ... reading the taps
// from shared memory (a broadcast: every lane reads the same word). Each bilinear tap is then one coalesced read
// (forward) or one coalesced atomicAdd (backward) of 32 consecutive channels. A warp per bin, rather than a block,
// needs only __syncwarp and keeps all 32 lanes busy for the usual C >= 32; the per-lane channel loop keeps the
// geometry out of the per-channel work. The arithmetic per channel is that of the one-thread-per-element kernels,
// in the same order, so both mappings give the same results.
//
// The shared-memory slice holds kMaxAdaptiveGrid taps per axis: enough for every adaptive grid (capped at
// kMaxAdaptiveGrid) and every sampling_ratio up to it; a larger sampling_ratio takes the one-thread-per-element
// kernels (bin_taps_fit), which read and write any strides.
#include "../../cuda_support.cuh"
#include "../roi_align.h"

namespace resnest_cuda {
namespace bin_taps {

constexpr int kWarp = 32;
constexpr int kBinsPerBlock = 8;  // warps per block
constexpr int kThreads = kWarp * kBinsPerBlock;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride loops over bins cover the rest

inline bool fits(int64_t sampling_ratio) { return sampling_ratio <= kMaxAdaptiveGrid; }

inline int64_t num_blocks(int64_t bins) {
  return std::min<int64_t>((bins + kBinsPerBlock - 1) / kBinsPerBlock, grid_cap(kMaxBlocks));
}

template <typename acc_t>
struct BinTaps {
  AxisTap<acc_t> ys[kMaxAdaptiveGrid];
  AxisTap<acc_t> xs[kMaxAdaptiveGrid];
};

// Lanes of one warp fill the taps of bin (ph, pw); sh, sw: the map's H and W strides. Ends with __syncwarp.
template <typename acc_t>
__device__ inline void fill(const RoiGeometry<acc_t>& g, int64_t ph, int64_t pw, int64_t height, int64_t width,
                            int64_t sh, int64_t sw, BinTaps<acc_t>& t, int lane) {
  for (int64_t i = lane; i < g.grid_h + g.grid_w; i += kWarp) {
    const bool row = i < g.grid_h;
    AxisTap<acc_t> a = row ? axis_tap<acc_t>(sample_coord<acc_t>(g.start_y, g.bin_h, ph, i, g.grid_h), height)
                           : axis_tap<acc_t>(sample_coord<acc_t>(g.start_x, g.bin_w, pw, i - g.grid_h, g.grid_w),
                                             width);
    const int64_t s = row ? sh : sw;
    a.lo *= s;
    a.hi *= s;
    if (row) {
      t.ys[i] = a;
    } else {
      t.xs[i - g.grid_h] = a;
    }
  }
  __syncwarp();
}

// Sum of the bilinear samples of one channel; `base` points at (image, channel) of the map.
template <typename scalar_t, typename acc_t>
__device__ inline acc_t pool(const scalar_t* __restrict__ base, const BinTaps<acc_t>& t, int64_t grid_h,
                             int64_t grid_w) {
  acc_t sum = 0;
  for (int64_t iy = 0; iy < grid_h; ++iy) {
    const AxisTap<acc_t> y = t.ys[iy];
    if (y.w_lo == acc_t(0) && y.w_hi == acc_t(0)) continue;  // sample row outside the map
    const scalar_t* row_lo = base + y.lo;
    const scalar_t* row_hi = base + y.hi;
    for (int64_t ix = 0; ix < grid_w; ++ix) {
      const AxisTap<acc_t> x = t.xs[ix];
      const acc_t top = x.w_lo * static_cast<acc_t>(row_lo[x.lo]) + x.w_hi * static_cast<acc_t>(row_lo[x.hi]);
      const acc_t bottom = x.w_lo * static_cast<acc_t>(row_hi[x.lo]) + x.w_hi * static_cast<acc_t>(row_hi[x.hi]);
      sum += y.w_lo * top + y.w_hi * bottom;
    }
  }
  return sum;
}

// Adds gv (the bin's gradient over its sample count) times the bilinear weights of every sample to one channel of
// the gradient; `gi` points at (image, channel).
template <typename acc_t>
__device__ inline void scatter(acc_t* __restrict__ gi, acc_t gv, const BinTaps<acc_t>& t, int64_t grid_h,
                               int64_t grid_w) {
  for (int64_t iy = 0; iy < grid_h; ++iy) {
    const AxisTap<acc_t> y = t.ys[iy];
    if (y.w_lo == acc_t(0) && y.w_hi == acc_t(0)) continue;
    const acc_t g_lo = gv * y.w_lo, g_hi = gv * y.w_hi;
    for (int64_t ix = 0; ix < grid_w; ++ix) {
      const AxisTap<acc_t> x = t.xs[ix];
      if (x.w_lo == acc_t(0) && x.w_hi == acc_t(0)) continue;
      atomicAdd(gi + y.lo + x.lo, g_lo * x.w_lo);
      atomicAdd(gi + y.lo + x.hi, g_lo * x.w_hi);
      atomicAdd(gi + y.hi + x.lo, g_hi * x.w_lo);
      atomicAdd(gi + y.hi + x.hi, g_hi * x.w_hi);
    }
  }
}

// Output bin `bin` of [K, ph, pw] as (k, ph, pw).
struct Bin {
  int64_t k, ph, pw;
};

__device__ inline Bin bin_of(int64_t bin, const RoiAlignParams& p) {
  return {bin / (p.pooled_height * p.pooled_width), (bin / p.pooled_width) % p.pooled_height, bin % p.pooled_width};
}

}  // namespace bin_taps
}  // namespace resnest_cuda
