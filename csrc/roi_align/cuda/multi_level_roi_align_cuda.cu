// CUDA multi-level RoIAlign (see roi_align.h): one launch for all levels. Each thread takes one output element
// (k, c, ph, pw), picks ROI k's level from its size and pools it from that level exactly as roi_align does
// (same geometry and taps). The levels' pointers, strides, sizes and scales travel in a small table passed by
// value. Backward: one thread per element of grad, atomicAdd into one accumulation-dtype buffer holding every
// level's NCHW gradient back to back, split and cast at the end. A ROI whose batch index is out of range pools to 0
// and receives no gradient (a kernel cannot raise).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../roi_align.h"

namespace resnest_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride loops cover the rest

int64_t num_blocks(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks); }

// Per-level data: forward reads `data` through the strides; backward writes at `offset` (elements) of the buffer.
template <typename scalar_t>
struct LevelTable {
  const scalar_t* data[kMaxPyramidLevels];
  int64_t offset[kMaxPyramidLevels];
  int64_t sn[kMaxPyramidLevels], sc[kMaxPyramidLevels], sh[kMaxPyramidLevels], sw[kMaxPyramidLevels];
  int64_t height[kMaxPyramidLevels], width[kMaxPyramidLevels];
  double scale[kMaxPyramidLevels];
  int64_t num_levels;
};

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(LevelTable<scalar_t> t, int64_t batch_size, int64_t channels,
                               const acc_t* __restrict__ rois, acc_t finest_scale, int64_t total, RoiAlignParams p,
                               scalar_t* __restrict__ out) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t pw = idx % p.pooled_width;
    const int64_t ph = (idx / p.pooled_width) % p.pooled_height;
    const int64_t c = (idx / (p.pooled_width * p.pooled_height)) % channels;
    const int64_t k = idx / (p.pooled_width * p.pooled_height * channels);
    const acc_t* roi = rois + k * 5;
    const int64_t l = pyramid_level<acc_t>(roi, finest_scale, t.num_levels);
    const int64_t height = t.height[l], width = t.width[l];
    if (!(roi[0] >= acc_t(0) && roi[0] < static_cast<acc_t>(batch_size)) || height == 0 || width == 0) {
      out[idx] = static_cast<scalar_t>(0);
      continue;
    }
    const RoiGeometry<acc_t> g = roi_geometry<acc_t>(roi, static_cast<acc_t>(t.scale[l]), p.pooled_height,
                                                     p.pooled_width, p.sampling_ratio, p.aligned);
    const scalar_t* base = t.data[l] + static_cast<int64_t>(roi[0]) * t.sn[l] + c * t.sc[l];
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
    const int64_t count = g.grid_h * g.grid_w > 0 ? g.grid_h * g.grid_w : 1;
    out[idx] = static_cast<scalar_t>(sum / static_cast<acc_t>(count));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, int64_t gn, int64_t gc, int64_t gh, int64_t gw,
                                LevelTable<scalar_t> t, int64_t batch_size, int64_t channels,
                                const acc_t* __restrict__ rois, acc_t finest_scale, int64_t total, RoiAlignParams p,
                                acc_t* __restrict__ grad_levels) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t pw = idx % p.pooled_width;
    const int64_t ph = (idx / p.pooled_width) % p.pooled_height;
    const int64_t c = (idx / (p.pooled_width * p.pooled_height)) % channels;
    const int64_t k = idx / (p.pooled_width * p.pooled_height * channels);
    const acc_t* roi = rois + k * 5;
    const int64_t l = pyramid_level<acc_t>(roi, finest_scale, t.num_levels);
    const int64_t height = t.height[l], width = t.width[l];
    if (!(roi[0] >= acc_t(0) && roi[0] < static_cast<acc_t>(batch_size)) || height == 0 || width == 0) continue;
    const RoiGeometry<acc_t> g = roi_geometry<acc_t>(roi, static_cast<acc_t>(t.scale[l]), p.pooled_height,
                                                     p.pooled_width, p.sampling_ratio, p.aligned);
    const int64_t count = g.grid_h * g.grid_w > 0 ? g.grid_h * g.grid_w : 1;
    const acc_t gv = static_cast<acc_t>(grad[k * gn + c * gc + ph * gh + pw * gw]) / static_cast<acc_t>(count);
    acc_t* gi = grad_levels + t.offset[l] + (static_cast<int64_t>(roi[0]) * channels + c) * height * width;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const AxisTap<acc_t> y = axis_tap<acc_t>(sample_coord<acc_t>(g.start_y, g.bin_h, ph, iy, g.grid_h), height);
      if (y.w_lo == acc_t(0) && y.w_hi == acc_t(0)) continue;
      const acc_t g_lo = gv * y.w_lo, g_hi = gv * y.w_hi;
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const AxisTap<acc_t> x = axis_tap<acc_t>(sample_coord<acc_t>(g.start_x, g.bin_w, pw, ix, g.grid_w), width);
        if (x.w_lo == acc_t(0) && x.w_hi == acc_t(0)) continue;
        atomicAdd(gi + y.lo * width + x.lo, g_lo * x.w_lo);
        atomicAdd(gi + y.lo * width + x.hi, g_lo * x.w_hi);
        atomicAdd(gi + y.hi * width + x.lo, g_hi * x.w_lo);
        atomicAdd(gi + y.hi * width + x.hi, g_hi * x.w_hi);
      }
    }
  }
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
  TORCH_CHECK(first.is_cuda(), op, ": features must be CUDA tensors");
  const c10::cuda::CUDAGuard guard(first.device());
  const RoiAlignParams p{0.0, pooled_height, pooled_width, sampling_ratio, aligned};
  const int64_t num_rois = rois.size(0), channels = first.size(1);
  at::Tensor out = at::empty({num_rois, channels, pooled_height, pooled_width}, first.options());
  if (out.numel() == 0) return out;
  const at::Tensor r = rois_in_acc_dtype(rois, first.scalar_type());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "multi_level_roi_align_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    LevelTable<scalar_t> t{};
    t.num_levels = static_cast<int64_t>(features.size());
    for (int64_t l = 0; l < t.num_levels; ++l) {
      const at::Tensor& f = features[l];
      t.data[l] = f.const_data_ptr<scalar_t>();
      t.sn[l] = f.stride(0), t.sc[l] = f.stride(1), t.sh[l] = f.stride(2), t.sw[l] = f.stride(3);
      t.height[l] = f.size(2), t.width[l] = f.size(3);
      t.scale[l] = scales[l];
    }
    forward_kernel<scalar_t, acc_t><<<num_blocks(out.numel()), kThreads, 0, stream>>>(
        t, first.size(0), channels, r.const_data_ptr<acc_t>(), static_cast<acc_t>(finest_scale), out.numel(), p,
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::vector<at::Tensor> multi_level_roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                                            c10::ArrayRef<double> spatial_scales,
                                                            int64_t pooled_height, int64_t pooled_width,
                                                            int64_t batch_size, int64_t channels,
                                                            c10::IntArrayRef heights, c10::IntArrayRef widths,
                                                            double finest_scale, int64_t sampling_ratio,
                                                            bool aligned) {
  const char* op = "multi_level_roi_align_backward";
  const int64_t num_levels = static_cast<int64_t>(heights.size());
  check_multi_level_params(num_levels, finest_scale, op);
  TORCH_CHECK(widths.size() == heights.size() && spatial_scales.size() == heights.size(), op,
              ": heights, widths and spatial_scales need one entry per level, got ", heights.size(), ", ",
              widths.size(), ", ", spatial_scales.size());
  const RoiAlignParams p{1.0, pooled_height, pooled_width, sampling_ratio, aligned};
  check_roi_align_backward_input(grad, rois, p, batch_size, channels, 0, 0);
  TORCH_CHECK(grad.is_cuda(), op, ": grad must be a CUDA tensor");
  at::globalContext().alertNotDeterministic("multi_level_roi_align_backward_cuda");  // atomic accumulation
  const c10::cuda::CUDAGuard guard(grad.device());
  std::vector<int64_t> offsets(num_levels + 1, 0);
  for (int64_t l = 0; l < num_levels; ++l) {
    TORCH_CHECK(heights[l] >= 0 && widths[l] >= 0 && spatial_scales[l] > 0, op, ": level ", l,
                " needs a non-negative size and a positive spatial scale, got ", heights[l], "x", widths[l],
                ", scale ", spatial_scales[l]);
    offsets[l + 1] = offsets[l] + batch_size * channels * heights[l] * widths[l];
  }
  at::Tensor buffer = at::zeros({offsets[num_levels]}, grad.options().dtype(grad_acc_dtype(grad.scalar_type())));
  if (grad.numel() > 0 && buffer.numel() > 0) {
    const at::Tensor r = rois_in_acc_dtype(rois, grad.scalar_type());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "multi_level_roi_align_bwd", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      LevelTable<scalar_t> t{};
      t.num_levels = num_levels;
      for (int64_t l = 0; l < num_levels; ++l) {
        t.offset[l] = offsets[l];
        t.height[l] = heights[l], t.width[l] = widths[l];
        t.scale[l] = spatial_scales[l];
      }
      backward_kernel<scalar_t, acc_t><<<num_blocks(grad.numel()), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), grad.stride(0), grad.stride(1), grad.stride(2), grad.stride(3), t,
          batch_size, channels, r.const_data_ptr<acc_t>(), static_cast<acc_t>(finest_scale), grad.numel(), p,
          buffer.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  std::vector<at::Tensor> grads;
  for (int64_t l = 0; l < num_levels; ++l) {
    grads.push_back(buffer.slice(0, offsets[l], offsets[l + 1])
                        .view({batch_size, channels, heights[l], widths[l]})
                        .to(grad.scalar_type(), /*non_blocking=*/false, /*copy=*/true));
  }
  return grads;
}

TORCH_LIBRARY_IMPL(resnest_cuda, CUDA, m) {
  m.impl("multi_level_roi_align", &multi_level_roi_align_cuda);
  m.impl("multi_level_roi_align_backward", &multi_level_roi_align_backward_cuda);
}

}  // namespace resnest_cuda
