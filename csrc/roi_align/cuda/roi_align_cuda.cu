// CUDA RoIAlign kernels, accumulation in at::opmath_type (fp32 for half/bfloat16/float, fp64 for double).
//
// Two thread mappings, both reading and writing through strides (no layout copy) with the same arithmetic:
// - channels_last input (and sampling_ratio <= kMaxAdaptiveGrid): one warp per output bin, lanes over channels,
//   the bin's taps computed once (bin_taps.cuh); the output and the gradient are channels_last.
// - otherwise (NCHW or a strided view): one thread per output element (k, c, ph, pw), pw fastest.
// Forward writes the output in the layout roi_align.h states. Backward scatters into an accumulation-dtype buffer in
// the input's layout (channels_last for a channels_last input) with atomicAdd: for fp32/fp64 that buffer is the
// gradient; for half/bfloat16 it is an fp32 scratch (atomics on 16-bit values would round every partial sum) of the
// same layout, cast to the input dtype at the end.
// A ROI whose batch index is out of range pools to 0 and receives no gradient, as on the CPU (roi_align.h).
// The atomic backward is not deterministic: it alerts under torch.use_deterministic_algorithms(True).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "../../cuda_support.cuh"
#include "../roi_align.h"
#include "bin_taps.cuh"

namespace resnest_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride loops cover the rest

int64_t num_blocks(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, grid_cap(kMaxBlocks)); }

struct Strides4 {
  int64_t n, c, h, w;
};

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// Output element `idx` of a contiguous [K, C, ph, pw] tensor as (k, c, ph, pw).
struct BinIndex {
  int64_t k, c, ph, pw;
};

__device__ inline BinIndex bin_index(int64_t idx, int64_t channels, const RoiAlignParams& p) {
  BinIndex b;
  b.pw = idx % p.pooled_width;
  b.ph = (idx / p.pooled_width) % p.pooled_height;
  b.c = (idx / (p.pooled_width * p.pooled_height)) % channels;
  b.k = idx / (p.pooled_width * p.pooled_height * channels);
  return b;
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ input, Strides4 s, int64_t batch_size, int64_t channels,
                               int64_t height, int64_t width, const acc_t* __restrict__ rois, int64_t total,
                               RoiAlignParams p, scalar_t* __restrict__ out_data, Strides4 os) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const BinIndex bi = bin_index(idx, channels, p);
    scalar_t& out = out_data[bi.k * os.n + bi.c * os.c + bi.ph * os.h + bi.pw * os.w];
    const acc_t* roi = rois + bi.k * 5;
    const int64_t n = roi_batch_index(roi[0], batch_size);
    if (n < 0) {
      out = static_cast<scalar_t>(0);
      continue;
    }
    const RoiGeometry<acc_t> g = roi_geometry<acc_t>(roi, static_cast<acc_t>(p.spatial_scale), p);
    const scalar_t* base = input + n * s.n + bi.c * s.c;
    acc_t sum = 0;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const AxisTap<acc_t> y = axis_tap<acc_t>(sample_coord<acc_t>(g.start_y, g.bin_h, bi.ph, iy, g.grid_h), height);
      if (y.w_lo == acc_t(0) && y.w_hi == acc_t(0)) continue;  // sample row outside the map
      const scalar_t* row_lo = base + y.lo * s.h;
      const scalar_t* row_hi = base + y.hi * s.h;
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const AxisTap<acc_t> x = axis_tap<acc_t>(sample_coord<acc_t>(g.start_x, g.bin_w, bi.pw, ix, g.grid_w), width);
        const acc_t top =
            x.w_lo * static_cast<acc_t>(row_lo[x.lo * s.w]) + x.w_hi * static_cast<acc_t>(row_lo[x.hi * s.w]);
        const acc_t bottom =
            x.w_lo * static_cast<acc_t>(row_hi[x.lo * s.w]) + x.w_hi * static_cast<acc_t>(row_hi[x.hi * s.w]);
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
    forward_bins_kernel(const scalar_t* __restrict__ input, Strides4 s, int64_t batch_size, int64_t channels,
                        int64_t height, int64_t width, const acc_t* __restrict__ rois, int64_t num_bins,
                        RoiAlignParams p, scalar_t* __restrict__ out, Strides4 os) {
  RESNEST_SHARED(bin_taps::BinTaps<acc_t>, taps, bin_taps::kBinsPerBlock);
  const int warp = threadIdx.x / bin_taps::kWarp, lane = threadIdx.x % bin_taps::kWarp;
  bin_taps::BinTaps<acc_t>& t = taps[warp];
  for (int64_t bin = blockIdx.x * static_cast<int64_t>(bin_taps::kBinsPerBlock) + warp; bin < num_bins;
       bin += static_cast<int64_t>(gridDim.x) * bin_taps::kBinsPerBlock) {
    const bin_taps::Bin b = bin_taps::bin_of(bin, p);
    scalar_t* o = out + b.k * os.n + b.ph * os.h + b.pw * os.w;
    const acc_t* roi = rois + b.k * 5;
    const int64_t n = roi_batch_index(roi[0], batch_size);
    if (n < 0) {
      for (int64_t c = lane; c < channels; c += bin_taps::kWarp) o[c * os.c] = static_cast<scalar_t>(0);
      continue;
    }
    const RoiGeometry<acc_t> g = roi_geometry<acc_t>(roi, static_cast<acc_t>(p.spatial_scale), p);
    bin_taps::fill<acc_t>(g, b.ph, b.pw, height, width, s.h, s.w, t, lane);
    const acc_t count = static_cast<acc_t>(g.samples());
    const scalar_t* base = input + n * s.n;
    for (int64_t c = lane; c < channels; c += bin_taps::kWarp) {
      o[c * os.c] = static_cast<scalar_t>(bin_taps::pool<scalar_t, acc_t>(base + c * s.c, t, g.grid_h, g.grid_w) /
                                          count);
    }
    __syncwarp();  // every lane is done with the taps before the next bin overwrites them
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, Strides4 gs, int64_t batch_size, int64_t channels,
                                int64_t height, int64_t width, const acc_t* __restrict__ rois, int64_t total,
                                RoiAlignParams p, acc_t* __restrict__ grad_input, Strides4 is) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const BinIndex bi = bin_index(idx, channels, p);
    const acc_t* roi = rois + bi.k * 5;
    const int64_t n = roi_batch_index(roi[0], batch_size);
    if (n < 0) continue;
    const RoiGeometry<acc_t> g = roi_geometry<acc_t>(roi, static_cast<acc_t>(p.spatial_scale), p);
    const int64_t count = g.samples();
    const acc_t gv = static_cast<acc_t>(grad[bi.k * gs.n + bi.c * gs.c + bi.ph * gs.h + bi.pw * gs.w]) /
                     static_cast<acc_t>(count);
    acc_t* gi = grad_input + n * is.n + bi.c * is.c;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const AxisTap<acc_t> y = axis_tap<acc_t>(sample_coord<acc_t>(g.start_y, g.bin_h, bi.ph, iy, g.grid_h), height);
      if (y.w_lo == acc_t(0) && y.w_hi == acc_t(0)) continue;
      const acc_t g_lo = gv * y.w_lo, g_hi = gv * y.w_hi;
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const AxisTap<acc_t> x = axis_tap<acc_t>(sample_coord<acc_t>(g.start_x, g.bin_w, bi.pw, ix, g.grid_w), width);
        if (x.w_lo == acc_t(0) && x.w_hi == acc_t(0)) continue;
        atomicAdd(gi + y.lo * is.h + x.lo * is.w, g_lo * x.w_lo);
        atomicAdd(gi + y.lo * is.h + x.hi * is.w, g_lo * x.w_hi);
        atomicAdd(gi + y.hi * is.h + x.lo * is.w, g_hi * x.w_lo);
        atomicAdd(gi + y.hi * is.h + x.hi * is.w, g_hi * x.w_hi);
      }
    }
  }
}

// Channel-fastest backward (bin_taps.cuh): the taps carry grad_input's strides `is`.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(bin_taps::kThreads)
    backward_bins_kernel(const scalar_t* __restrict__ grad, Strides4 gs, int64_t batch_size, int64_t channels,
                         int64_t height, int64_t width, const acc_t* __restrict__ rois, int64_t num_bins,
                         RoiAlignParams p, acc_t* __restrict__ grad_input, Strides4 is) {
  RESNEST_SHARED(bin_taps::BinTaps<acc_t>, taps, bin_taps::kBinsPerBlock);
  const int warp = threadIdx.x / bin_taps::kWarp, lane = threadIdx.x % bin_taps::kWarp;
  bin_taps::BinTaps<acc_t>& t = taps[warp];
  for (int64_t bin = blockIdx.x * static_cast<int64_t>(bin_taps::kBinsPerBlock) + warp; bin < num_bins;
       bin += static_cast<int64_t>(gridDim.x) * bin_taps::kBinsPerBlock) {
    const bin_taps::Bin b = bin_taps::bin_of(bin, p);
    const acc_t* roi = rois + b.k * 5;
    const int64_t n = roi_batch_index(roi[0], batch_size);
    if (n < 0) continue;
    const RoiGeometry<acc_t> g = roi_geometry<acc_t>(roi, static_cast<acc_t>(p.spatial_scale), p);
    bin_taps::fill<acc_t>(g, b.ph, b.pw, height, width, is.h, is.w, t, lane);
    const acc_t count = static_cast<acc_t>(g.samples());
    const scalar_t* gb = grad + b.k * gs.n + b.ph * gs.h + b.pw * gs.w;
    for (int64_t c = lane; c < channels; c += bin_taps::kWarp) {
      const acc_t gv = static_cast<acc_t>(gb[c * gs.c]) / count;
      bin_taps::scatter<acc_t>(grad_input + n * is.n + c * is.c, gv, t, g.grid_h, g.grid_w);
    }
    __syncwarp();  // every lane is done with the taps before the next bin overwrites them
  }
}

}  // namespace

at::Tensor roi_align_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                          int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  const RoiAlignParams p{spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned};
  check_roi_align_input(input, rois, p, "roi_align");
  check_kernel_device(input, "roi_align", "input");
  const DeviceGuard guard(input.device());
  const int64_t num_rois = rois.size(0), channels = input.size(1);
  const int64_t height = input.size(2), width = input.size(3);
  const bool channels_last = pools_channels_last({input});
  at::Tensor out =
      at::empty({num_rois, channels, pooled_height, pooled_width}, input.options(), memory_format_of(channels_last));
  if (out.numel() == 0) return out;
  if (height == 0 || width == 0) return out.zero_();
  const at::Tensor r = rois_in_acc_dtype(rois, input.scalar_type());
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (channels_last && bin_taps::fits(sampling_ratio)) {
      const int64_t bins = num_rois * pooled_height * pooled_width;
      launch(forward_bins_kernel<scalar_t, acc_t>, bin_taps::num_blocks(bins), bin_taps::kThreads, 0, stream,
          input.const_data_ptr<scalar_t>(), strides_of(input), input.size(0), channels, height, width,
          r.const_data_ptr<acc_t>(), bins, p, out.mutable_data_ptr<scalar_t>(), strides_of(out));
    } else {
      launch(forward_kernel<scalar_t, acc_t>, num_blocks(out.numel()), kThreads, 0, stream,
          input.const_data_ptr<scalar_t>(), strides_of(input), input.size(0), channels, height, width,
          r.const_data_ptr<acc_t>(), out.numel(), p, out.mutable_data_ptr<scalar_t>(), strides_of(out));
    }
  });
  return out;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                                   bool channels_last) {
  const RoiAlignParams p{spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned};
  check_roi_align_backward_input(grad, rois, p, batch_size, channels, height, width);
  check_kernel_device(grad, "roi_align_backward", "grad");
  // atomicAdd makes the summation order, and so the rounding of grad_input, vary from run to run.
  at::globalContext().alertNotDeterministic("roi_align_backward_cuda");
  const DeviceGuard guard(grad.device());
  // fp32/fp64: the gradient itself; half/bfloat16: an fp32 scratch of the same layout, cast at the end.
  at::Tensor grad_input =
      zero_grad_buffer({batch_size, channels, height, width}, grad.options(), grad.scalar_type(), channels_last);
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input.to(grad.scalar_type());
  const at::Tensor r = rois_in_acc_dtype(rois, grad.scalar_type());
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (channels_last && bin_taps::fits(sampling_ratio)) {
      const int64_t bins = grad.size(0) * pooled_height * pooled_width;
      launch(backward_bins_kernel<scalar_t, acc_t>, bin_taps::num_blocks(bins), bin_taps::kThreads, 0, stream,
          grad.const_data_ptr<scalar_t>(), strides_of(grad), batch_size, channels, height, width,
          r.const_data_ptr<acc_t>(), bins, p, grad_input.mutable_data_ptr<acc_t>(), strides_of(grad_input));
    } else {
      launch(backward_kernel<scalar_t, acc_t>, num_blocks(grad.numel()), kThreads, 0, stream,
          grad.const_data_ptr<scalar_t>(), strides_of(grad), batch_size, channels, height, width,
          r.const_data_ptr<acc_t>(), grad.numel(), p, grad_input.mutable_data_ptr<acc_t>(), strides_of(grad_input));
    }
  });
  return grad_input.to(grad.scalar_type());
}

RESNEST_CUDA_KERNELS(m) {
  m.impl("roi_align", &roi_align_cuda);
  m.impl("roi_align_backward", &roi_align_backward_cuda);
}

}  // namespace resnest_cuda
