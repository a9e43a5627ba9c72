// CUDA multi-level RoIAlign (see roi_align.h): one launch for all levels. Each output bin picks ROI k's level from
// its size and pools it from that level exactly as roi_align does (same geometry, taps and thread mappings: one warp
// per bin with lanes over channels when the output is channels_last, bin_taps.cuh; else one thread per output
// element). The levels' pointers, strides, sizes and scales travel in a small table passed by value. Backward:
// atomicAdd into one gradient buffer per level, in that level's layout (channels_last when asked): for fp32/fp64
// the buffers are the gradients, for half/bfloat16 fp32 scratches of the same layouts, cast at the end. A ROI whose
// batch index is out of range pools to 0 and receives no gradient (a kernel cannot raise).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../../cuda_support.cuh"
#include "../roi_align.h"
#include "bin_taps.cuh"

namespace resnest_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride loops cover the rest

int64_t num_blocks(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, grid_cap(kMaxBlocks)); }

// Per-level data: forward reads the features (ptr_t = const scalar_t*), backward writes the gradient buffers
// (ptr_t = acc_t*), both through the strides.
template <typename ptr_t>
struct LevelTable {
  ptr_t data[kMaxPyramidLevels];
  int64_t sn[kMaxPyramidLevels], sc[kMaxPyramidLevels], sh[kMaxPyramidLevels], sw[kMaxPyramidLevels];
  int64_t height[kMaxPyramidLevels], width[kMaxPyramidLevels];
  double scale[kMaxPyramidLevels];
  int64_t num_levels;
};

template <typename ptr_t>
LevelTable<ptr_t> level_table(const std::vector<at::Tensor>& maps, c10::ArrayRef<double> scales,
                              ptr_t (*pointer)(const at::Tensor&)) {
  LevelTable<ptr_t> t{};
  t.num_levels = static_cast<int64_t>(maps.size());
  for (int64_t l = 0; l < t.num_levels; ++l) {
    const at::Tensor& m = maps[l];
    t.data[l] = pointer(m);
    t.sn[l] = m.stride(0), t.sc[l] = m.stride(1), t.sh[l] = m.stride(2), t.sw[l] = m.stride(3);
    t.height[l] = m.size(2), t.width[l] = m.size(3);
    t.scale[l] = scales[l];
  }
  return t;
}

struct Strides4 {
  int64_t n, c, h, w;
};

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// Level of ROI `roi` and its image, or -1 when it pools to 0 (batch index out of range, or an empty level map).
template <typename ptr_t, typename acc_t>
__device__ inline int64_t roi_image(const acc_t* roi, const LevelTable<ptr_t>& t, int64_t l, int64_t batch_size) {
  if (t.height[l] == 0 || t.width[l] == 0) return -1;
  return roi_batch_index(roi[0], batch_size);
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(LevelTable<const scalar_t*> t, int64_t batch_size, int64_t channels,
                               const acc_t* __restrict__ rois, acc_t finest_scale, int64_t total, RoiAlignParams p,
                               scalar_t* __restrict__ out_data, Strides4 os) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t pw = idx % p.pooled_width;
    const int64_t ph = (idx / p.pooled_width) % p.pooled_height;
    const int64_t c = (idx / (p.pooled_width * p.pooled_height)) % channels;
    const int64_t k = idx / (p.pooled_width * p.pooled_height * channels);
    scalar_t& out = out_data[k * os.n + c * os.c + ph * os.h + pw * os.w];
    const acc_t* roi = rois + k * 5;
    const int64_t l = pyramid_level<acc_t>(roi, finest_scale, t.num_levels);
    const int64_t height = t.height[l], width = t.width[l];
    const int64_t n = roi_image(roi, t, l, batch_size);
    if (n < 0) {
      out = static_cast<scalar_t>(0);
      continue;
    }
    const RoiGeometry<acc_t> g = roi_geometry<acc_t>(roi, static_cast<acc_t>(t.scale[l]), p);
    const scalar_t* base = t.data[l] + n * t.sn[l] + c * t.sc[l];
    acc_t sum = 0;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const AxisTap<acc_t> y = axis_tap<acc_t>(sample_coord<acc_t>(g.start_y, g.bin_h, ph, iy, g.grid_h), height);
      if (y.w_lo == acc_t(0) && y.w_hi == acc_t(0)) continue;  // sample row outside the map
      const scalar_t* row_lo = base + y.lo * t.sh[l];
      const scalar_t* row_hi = base + y.hi * t.sh[l];
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const AxisTap<acc_t> x = axis_tap<acc_t>(sample_coord<acc_t>(g.start_x, g.bin_w, pw, ix, g.grid_w), width);
        const int64_t lo = x.lo * t.sw[l], hi = x.hi * t.sw[l];
        const acc_t top = x.w_lo * static_cast<acc_t>(row_lo[lo]) + x.w_hi * static_cast<acc_t>(row_lo[hi]);
        const acc_t bottom = x.w_lo * static_cast<acc_t>(row_hi[lo]) + x.w_hi * static_cast<acc_t>(row_hi[hi]);
        sum += y.w_lo * top + y.w_hi * bottom;
      }
    }
    const int64_t count = g.samples();
    out = static_cast<scalar_t>(sum / static_cast<acc_t>(count));
  }
}

// Channel-fastest forward (bin_taps.cuh): warp w of the block takes bin blockIdx.x * kBinsPerBlock + w.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(bin_taps::kThreads)
    forward_bins_kernel(LevelTable<const scalar_t*> t, int64_t batch_size, int64_t channels,
                        const acc_t* __restrict__ rois, acc_t finest_scale, int64_t num_bins, RoiAlignParams p,
                        scalar_t* __restrict__ out, Strides4 os) {
  RESNEST_SHARED(bin_taps::BinTaps<acc_t>, taps, bin_taps::kBinsPerBlock);
  const int warp = threadIdx.x / bin_taps::kWarp, lane = threadIdx.x % bin_taps::kWarp;
  bin_taps::BinTaps<acc_t>& bt = taps[warp];
  for (int64_t bin = blockIdx.x * static_cast<int64_t>(bin_taps::kBinsPerBlock) + warp; bin < num_bins;
       bin += static_cast<int64_t>(gridDim.x) * bin_taps::kBinsPerBlock) {
    const bin_taps::Bin b = bin_taps::bin_of(bin, p);
    scalar_t* o = out + b.k * os.n + b.ph * os.h + b.pw * os.w;
    const acc_t* roi = rois + b.k * 5;
    const int64_t l = pyramid_level<acc_t>(roi, finest_scale, t.num_levels);
    const int64_t n = roi_image(roi, t, l, batch_size);
    if (n < 0) {
      for (int64_t c = lane; c < channels; c += bin_taps::kWarp) o[c * os.c] = static_cast<scalar_t>(0);
      continue;
    }
    const RoiGeometry<acc_t> g = roi_geometry<acc_t>(roi, static_cast<acc_t>(t.scale[l]), p);
    bin_taps::fill<acc_t>(g, b.ph, b.pw, t.height[l], t.width[l], t.sh[l], t.sw[l], bt, lane);
    const acc_t count = static_cast<acc_t>(g.samples());
    const scalar_t* base = t.data[l] + n * t.sn[l];
    for (int64_t c = lane; c < channels; c += bin_taps::kWarp) {
      o[c * os.c] =
          static_cast<scalar_t>(bin_taps::pool<scalar_t, acc_t>(base + c * t.sc[l], bt, g.grid_h, g.grid_w) / count);
    }
    __syncwarp();  // every lane is done with the taps before the next bin overwrites them
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, Strides4 gs, LevelTable<acc_t*> t,
                                int64_t batch_size, int64_t channels, const acc_t* __restrict__ rois,
                                acc_t finest_scale, int64_t total, RoiAlignParams p) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t pw = idx % p.pooled_width;
    const int64_t ph = (idx / p.pooled_width) % p.pooled_height;
    const int64_t c = (idx / (p.pooled_width * p.pooled_height)) % channels;
    const int64_t k = idx / (p.pooled_width * p.pooled_height * channels);
    const acc_t* roi = rois + k * 5;
    const int64_t l = pyramid_level<acc_t>(roi, finest_scale, t.num_levels);
    const int64_t height = t.height[l], width = t.width[l];
    const int64_t n = roi_image(roi, t, l, batch_size);
    if (n < 0) continue;
    const RoiGeometry<acc_t> g = roi_geometry<acc_t>(roi, static_cast<acc_t>(t.scale[l]), p);
    const int64_t count = g.samples();
    const acc_t gv = static_cast<acc_t>(grad[k * gs.n + c * gs.c + ph * gs.h + pw * gs.w]) / static_cast<acc_t>(count);
    acc_t* gi = t.data[l] + n * t.sn[l] + c * t.sc[l];
    const int64_t sh = t.sh[l], sw = t.sw[l];
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const AxisTap<acc_t> y = axis_tap<acc_t>(sample_coord<acc_t>(g.start_y, g.bin_h, ph, iy, g.grid_h), height);
      if (y.w_lo == acc_t(0) && y.w_hi == acc_t(0)) continue;
      const acc_t g_lo = gv * y.w_lo, g_hi = gv * y.w_hi;
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const AxisTap<acc_t> x = axis_tap<acc_t>(sample_coord<acc_t>(g.start_x, g.bin_w, pw, ix, g.grid_w), width);
        if (x.w_lo == acc_t(0) && x.w_hi == acc_t(0)) continue;
        atomicAdd(gi + y.lo * sh + x.lo * sw, g_lo * x.w_lo);
        atomicAdd(gi + y.lo * sh + x.hi * sw, g_lo * x.w_hi);
        atomicAdd(gi + y.hi * sh + x.lo * sw, g_hi * x.w_lo);
        atomicAdd(gi + y.hi * sh + x.hi * sw, g_hi * x.w_hi);
      }
    }
  }
}

// Channel-fastest backward (bin_taps.cuh): the taps carry the strides of the bin's level gradient.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(bin_taps::kThreads)
    backward_bins_kernel(const scalar_t* __restrict__ grad, Strides4 gs, LevelTable<acc_t*> t, int64_t batch_size,
                         int64_t channels, const acc_t* __restrict__ rois, acc_t finest_scale, int64_t num_bins,
                         RoiAlignParams p) {
  RESNEST_SHARED(bin_taps::BinTaps<acc_t>, taps, bin_taps::kBinsPerBlock);
  const int warp = threadIdx.x / bin_taps::kWarp, lane = threadIdx.x % bin_taps::kWarp;
  bin_taps::BinTaps<acc_t>& bt = taps[warp];
  for (int64_t bin = blockIdx.x * static_cast<int64_t>(bin_taps::kBinsPerBlock) + warp; bin < num_bins;
       bin += static_cast<int64_t>(gridDim.x) * bin_taps::kBinsPerBlock) {
    const bin_taps::Bin b = bin_taps::bin_of(bin, p);
    const acc_t* roi = rois + b.k * 5;
    const int64_t l = pyramid_level<acc_t>(roi, finest_scale, t.num_levels);
    const int64_t n = roi_image(roi, t, l, batch_size);
    if (n < 0) continue;
    const RoiGeometry<acc_t> g = roi_geometry<acc_t>(roi, static_cast<acc_t>(t.scale[l]), p);
    bin_taps::fill<acc_t>(g, b.ph, b.pw, t.height[l], t.width[l], t.sh[l], t.sw[l], bt, lane);
    const acc_t count = static_cast<acc_t>(g.samples());
    const scalar_t* gb = grad + b.k * gs.n + b.ph * gs.h + b.pw * gs.w;
    acc_t* gi = t.data[l] + n * t.sn[l];
    for (int64_t c = lane; c < channels; c += bin_taps::kWarp) {
      bin_taps::scatter<acc_t>(gi + c * t.sc[l], static_cast<acc_t>(gb[c * gs.c]) / count, bt, g.grid_h, g.grid_w);
    }
    __syncwarp();  // every lane is done with the taps before the next bin overwrites them
  }
}

template <typename scalar_t>
const scalar_t* read_pointer(const at::Tensor& m) {
  return m.const_data_ptr<scalar_t>();
}

template <typename acc_t>
acc_t* write_pointer(const at::Tensor& m) {
  return m.mutable_data_ptr<acc_t>();
}

}  // namespace

at::Tensor multi_level_roi_align_cuda(at::TensorList features, const at::Tensor& rois,
                                      c10::ArrayRef<double> spatial_scales, int64_t pooled_height,
                                      int64_t pooled_width, double finest_scale, int64_t sampling_ratio,
                                      bool aligned) {
  const char* op = "multi_level_roi_align";
  const std::vector<double> scales(spatial_scales.begin(), spatial_scales.end());
  check_multi_level_input(features, rois, scales, pooled_height, pooled_width, finest_scale, op);
  const at::Tensor& first = features[0];
  for (const at::Tensor& f : features) check_kernel_device(f, op, "features");
  const DeviceGuard guard(first.device());
  const RoiAlignParams p{0.0, pooled_height, pooled_width, sampling_ratio, aligned};
  const int64_t num_rois = rois.size(0), channels = first.size(1);
  const bool channels_last = pools_channels_last(features);
  at::Tensor out =
      at::empty({num_rois, channels, pooled_height, pooled_width}, first.options(), memory_format_of(channels_last));
  if (out.numel() == 0) return out;
  const at::Tensor r = rois_in_acc_dtype(rois, first.scalar_type());
  const std::vector<at::Tensor> maps(features.begin(), features.end());
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "multi_level_roi_align_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const LevelTable<const scalar_t*> t = level_table<const scalar_t*>(maps, spatial_scales, &read_pointer<scalar_t>);
    if (channels_last && bin_taps::fits(sampling_ratio)) {
      const int64_t bins = num_rois * pooled_height * pooled_width;
      launch(forward_bins_kernel<scalar_t, acc_t>, bin_taps::num_blocks(bins), bin_taps::kThreads, 0, stream,
          t, first.size(0), channels, r.const_data_ptr<acc_t>(), static_cast<acc_t>(finest_scale), bins, p,
          out.mutable_data_ptr<scalar_t>(), strides_of(out));
    } else {
      launch(forward_kernel<scalar_t, acc_t>, num_blocks(out.numel()), kThreads, 0, stream,
          t, first.size(0), channels, r.const_data_ptr<acc_t>(), static_cast<acc_t>(finest_scale), out.numel(), p,
          out.mutable_data_ptr<scalar_t>(), strides_of(out));
    }
  });
  return out;
}

std::vector<at::Tensor> multi_level_roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                                            c10::ArrayRef<double> spatial_scales,
                                                            int64_t pooled_height, int64_t pooled_width,
                                                            int64_t batch_size, int64_t channels,
                                                            c10::IntArrayRef heights, c10::IntArrayRef widths,
                                                            double finest_scale, int64_t sampling_ratio,
                                                            bool aligned, const c10::List<bool>& channels_last) {
  const char* op = "multi_level_roi_align_backward";
  const int64_t num_levels = static_cast<int64_t>(heights.size());
  check_multi_level_params(num_levels, finest_scale, op);
  TORCH_CHECK(widths.size() == heights.size() && spatial_scales.size() == heights.size(), op,
              ": heights, widths and spatial_scales need one entry per level, got ", heights.size(), ", ",
              widths.size(), ", ", spatial_scales.size());
  check_level_layouts(channels_last, heights.size(), op);
  const RoiAlignParams p{1.0, pooled_height, pooled_width, sampling_ratio, aligned};
  check_roi_align_backward_input(grad, rois, p, batch_size, channels, 0, 0);
  check_kernel_device(grad, op, "grad");
  at::globalContext().alertNotDeterministic("multi_level_roi_align_backward_cuda");  // atomic accumulation
  const DeviceGuard guard(grad.device());
  // One buffer per level in its layout: the gradient itself for fp32/fp64, an fp32 scratch for half/bfloat16.
  std::vector<at::Tensor> grads;
  bool any_channels_last = false;
  for (int64_t l = 0; l < num_levels; ++l) {
    TORCH_CHECK(heights[l] >= 0 && widths[l] >= 0 && spatial_scales[l] > 0, op, ": level ", l,
                " needs a non-negative size and a positive spatial scale, got ", heights[l], "x", widths[l],
                ", scale ", spatial_scales[l]);
    const bool cl = level_channels_last(channels_last, l);
    any_channels_last = any_channels_last || cl;
    grads.push_back(
        zero_grad_buffer({batch_size, channels, heights[l], widths[l]}, grad.options(), grad.scalar_type(), cl));
  }
  if (grad.numel() > 0 && batch_size > 0 && channels > 0) {
    const at::Tensor r = rois_in_acc_dtype(rois, grad.scalar_type());
    const cudaStream_t stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "multi_level_roi_align_bwd", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const LevelTable<acc_t*> t = level_table<acc_t*>(grads, spatial_scales, &write_pointer<acc_t>);
      // The channel-fastest mapping is right for any layout; it is chosen when a level's gradient is channels_last.
      if (any_channels_last && bin_taps::fits(sampling_ratio)) {
        const int64_t bins = grad.size(0) * pooled_height * pooled_width;
        launch(backward_bins_kernel<scalar_t, acc_t>, bin_taps::num_blocks(bins), bin_taps::kThreads, 0, stream,
            grad.const_data_ptr<scalar_t>(), strides_of(grad), t, batch_size, channels, r.const_data_ptr<acc_t>(),
            static_cast<acc_t>(finest_scale), bins, p);
      } else {
        launch(backward_kernel<scalar_t, acc_t>, num_blocks(grad.numel()), kThreads, 0, stream,
            grad.const_data_ptr<scalar_t>(), strides_of(grad), t, batch_size, channels, r.const_data_ptr<acc_t>(),
            static_cast<acc_t>(finest_scale), grad.numel(), p);
      }
    });
  }
  for (at::Tensor& g : grads) g = g.to(grad.scalar_type());  // a no-op for fp32/fp64; keeps the layout
  return grads;
}

RESNEST_CUDA_KERNELS(m) {
  m.impl("multi_level_roi_align", &multi_level_roi_align_cuda);
  m.impl("multi_level_roi_align_backward", &multi_level_roi_align_backward_cuda);
}

}  // namespace resnest_cuda
