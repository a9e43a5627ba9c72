// CUDA RoIAlign kernels, accumulation in at::opmath_type (fp32 for half/bfloat16/float, fp64 for double).
//
// Forward: one thread per output element (k, c, ph, pw), reading input through its strides (NCHW, channels_last
// or a strided view, no layout copy). Backward: one thread per element of grad, scattering its share into an
// accumulation-dtype NCHW buffer with atomicAdd (fp32 for half/bfloat16, cast to the input dtype at the end).
// A ROI whose batch index is out of range pools to 0 and receives no gradient, as on the CPU (roi_align.h).
// The atomic backward is not deterministic: it alerts under torch.use_deterministic_algorithms(True).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../roi_align.h"

namespace resnest_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride loops cover the rest

int64_t num_blocks(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks); }

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
                               RoiAlignParams p, scalar_t* __restrict__ out) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const BinIndex bi = bin_index(idx, channels, p);
    const acc_t* roi = rois + bi.k * 5;
    const int64_t n = roi_batch_index(roi[0], batch_size);
    if (n < 0) {
      out[idx] = static_cast<scalar_t>(0);
      continue;
    }
    const RoiGeometry<acc_t> g = roi_geometry<acc_t>(roi, static_cast<acc_t>(p.spatial_scale), p.pooled_height,
                                                     p.pooled_width, p.sampling_ratio, p.aligned);
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
    const int64_t count = g.grid_h * g.grid_w > 0 ? g.grid_h * g.grid_w : 1;
    out[idx] = static_cast<scalar_t>(sum / static_cast<acc_t>(count));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, Strides4 gs, int64_t batch_size, int64_t channels,
                                int64_t height, int64_t width, const acc_t* __restrict__ rois, int64_t total,
                                RoiAlignParams p, acc_t* __restrict__ grad_input) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const BinIndex bi = bin_index(idx, channels, p);
    const acc_t* roi = rois + bi.k * 5;
    const int64_t n = roi_batch_index(roi[0], batch_size);
    if (n < 0) continue;
    const RoiGeometry<acc_t> g = roi_geometry<acc_t>(roi, static_cast<acc_t>(p.spatial_scale), p.pooled_height,
                                                     p.pooled_width, p.sampling_ratio, p.aligned);
    const int64_t count = g.grid_h * g.grid_w > 0 ? g.grid_h * g.grid_w : 1;
    const acc_t gv = static_cast<acc_t>(grad[bi.k * gs.n + bi.c * gs.c + bi.ph * gs.h + bi.pw * gs.w]) /
                     static_cast<acc_t>(count);
    acc_t* gi = grad_input + (n * channels + bi.c) * height * width;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const AxisTap<acc_t> y = axis_tap<acc_t>(sample_coord<acc_t>(g.start_y, g.bin_h, bi.ph, iy, g.grid_h), height);
      if (y.w_lo == acc_t(0) && y.w_hi == acc_t(0)) continue;
      const acc_t g_lo = gv * y.w_lo, g_hi = gv * y.w_hi;
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const AxisTap<acc_t> x = axis_tap<acc_t>(sample_coord<acc_t>(g.start_x, g.bin_w, bi.pw, ix, g.grid_w), width);
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

at::Tensor roi_align_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                          int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  const RoiAlignParams p{spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned};
  check_roi_align_input(input, rois, p, "roi_align");
  TORCH_CHECK(input.is_cuda(), "roi_align: input must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t num_rois = rois.size(0), channels = input.size(1);
  const int64_t height = input.size(2), width = input.size(3);
  at::Tensor out = at::empty({num_rois, channels, pooled_height, pooled_width}, input.options());
  if (out.numel() == 0) return out;
  if (height == 0 || width == 0) return out.zero_();
  const at::Tensor r = rois_in_acc_dtype(rois, input.scalar_type());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<num_blocks(out.numel()), kThreads, 0, stream>>>(
        input.const_data_ptr<scalar_t>(), strides_of(input), input.size(0), channels, height, width,
        r.const_data_ptr<acc_t>(), out.numel(), p, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  const RoiAlignParams p{spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned};
  check_roi_align_backward_input(grad, rois, p, batch_size, channels, height, width);
  TORCH_CHECK(grad.is_cuda(), "roi_align_backward: grad must be a CUDA tensor");
  // atomicAdd makes the summation order, and so the rounding of grad_input, vary from run to run.
  at::globalContext().alertNotDeterministic("roi_align_backward_cuda");
  const c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor grad_input =
      at::zeros({batch_size, channels, height, width}, grad.options().dtype(grad_acc_dtype(grad.scalar_type())));
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input.to(grad.scalar_type());
  const at::Tensor r = rois_in_acc_dtype(rois, grad.scalar_type());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t, acc_t><<<num_blocks(grad.numel()), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), strides_of(grad), batch_size, channels, height, width,
        r.const_data_ptr<acc_t>(), grad.numel(), p, grad_input.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input.to(grad.scalar_type());
}

TORCH_LIBRARY_IMPL(resnest_cuda, CUDA, m) {
  m.impl("roi_align", &roi_align_cuda);
  m.impl("roi_align_backward", &roi_align_backward_cuda);
}

}  // namespace resnest_cuda
