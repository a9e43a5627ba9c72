// CPU RoIAlign kernels with accumulation in at::opmath_type (fp32 for half/bfloat16/float, fp64 for double).
//
// Bilinear weights are separable (w = w_y * w_x, and a sample is valid only when both its coordinates are), so the
// interpolation taps of every sample row and sample column of a ROI are computed once and shared by all channels.
// Forward runs in parallel over ROIs. Backward runs in parallel over (image, channel) pairs: each pair owns its
// own slice of grad_input, so no two tasks ever write the same element. Any input strides are read directly
// (NCHW, channels_last or strided views), without a layout copy; the output and the gradient are written in the
// layout roi_align.h states (channels_last for a channels_last input), through their strides.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../roi_align.h"

namespace resnest_cuda {
namespace {

struct Strides4 {
  int64_t n, c, h, w;
};

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// Interpolation taps of one ROI; tap offsets are already multiplied by the H (ys) or W (xs) stride.
template <typename acc_t>
struct RoiTaps {
  int64_t batch = 0;               // image of the ROI, -1 when its batch index is out of range (no samples)
  int64_t grid_h = 0, grid_w = 0;
  acc_t count = 1;                 // RoiGeometry::samples(): samples averaged per bin
  std::vector<AxisTap<acc_t>> ys;  // [pooled_h * grid_h]
  std::vector<AxisTap<acc_t>> xs;  // [pooled_w * grid_w]
};

template <typename acc_t>
void compute_taps(const acc_t* roi, const RoiAlignParams& p, int64_t batch_size, int64_t height, int64_t width,
                  int64_t stride_h, int64_t stride_w, RoiTaps<acc_t>& t) {
  RoiGeometry<acc_t> g = roi_geometry<acc_t>(roi, static_cast<acc_t>(p.spatial_scale), p);
  t.batch = roi_batch_index(roi[0], batch_size);
  if (t.batch < 0) g.grid_h = g.grid_w = 0;
  t.grid_h = g.grid_h;
  t.grid_w = g.grid_w;
  t.count = static_cast<acc_t>(g.samples());
  t.ys.resize(p.pooled_height * g.grid_h);
  t.xs.resize(p.pooled_width * g.grid_w);
  for (int64_t ph = 0; ph < p.pooled_height; ++ph) {
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      AxisTap<acc_t> a = axis_tap<acc_t>(sample_coord<acc_t>(g.start_y, g.bin_h, ph, iy, g.grid_h), height);
      a.lo *= stride_h;
      a.hi *= stride_h;
      t.ys[ph * g.grid_h + iy] = a;
    }
  }
  for (int64_t pw = 0; pw < p.pooled_width; ++pw) {
    for (int64_t ix = 0; ix < g.grid_w; ++ix) {
      AxisTap<acc_t> a = axis_tap<acc_t>(sample_coord<acc_t>(g.start_x, g.bin_w, pw, ix, g.grid_w), width);
      a.lo *= stride_w;
      a.hi *= stride_w;
      t.xs[pw * g.grid_w + ix] = a;
    }
  }
}

template <typename scalar_t, typename acc_t>
void forward_kernel(const scalar_t* input, Strides4 s, int64_t batch_size, int64_t channels, int64_t height,
                    int64_t width, const acc_t* rois, int64_t num_rois, const RoiAlignParams& p, scalar_t* out,
                    Strides4 os) {
  at::parallel_for(0, num_rois, 1, [&](int64_t begin, int64_t end) {
    RoiTaps<acc_t> t;
    for (int64_t k = begin; k < end; ++k) {
      compute_taps<acc_t>(rois + k * 5, p, batch_size, height, width, s.h, s.w, t);
      for (int64_t c = 0; c < channels; ++c) {
        const scalar_t* base = input + std::max<int64_t>(t.batch, 0) * s.n + c * s.c;  // not read when batch < 0
        scalar_t* o = out + k * os.n + c * os.c;
        for (int64_t ph = 0; ph < p.pooled_height; ++ph) {
          for (int64_t pw = 0; pw < p.pooled_width; ++pw) {
            acc_t sum = 0;
            for (int64_t iy = 0; iy < t.grid_h; ++iy) {
              const AxisTap<acc_t>& y = t.ys[ph * t.grid_h + iy];
              if (y.w_lo == acc_t(0) && y.w_hi == acc_t(0)) continue;  // sample row outside the map: adds 0
              for (int64_t ix = 0; ix < t.grid_w; ++ix) {
                const AxisTap<acc_t>& x = t.xs[pw * t.grid_w + ix];
                const acc_t top = x.w_lo * static_cast<acc_t>(base[y.lo + x.lo]) +
                                  x.w_hi * static_cast<acc_t>(base[y.lo + x.hi]);
                const acc_t bottom = x.w_lo * static_cast<acc_t>(base[y.hi + x.lo]) +
                                     x.w_hi * static_cast<acc_t>(base[y.hi + x.hi]);
                sum += y.w_lo * top + y.w_hi * bottom;
              }
            }
            o[ph * os.h + pw * os.w] = static_cast<scalar_t>(sum / t.count);
          }
        }
      }
    }
  });
}

// grad_input (acc_t, strides `is`) += the transpose of the forward interpolation applied to grad.
template <typename scalar_t, typename acc_t>
void backward_kernel(const scalar_t* grad, Strides4 gs, const acc_t* rois, int64_t num_rois, int64_t batch_size,
                     int64_t channels, int64_t height, int64_t width, const RoiAlignParams& p, acc_t* grad_input,
                     Strides4 is) {
  std::vector<RoiTaps<acc_t>> taps(num_rois);
  at::parallel_for(0, num_rois, 16, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      compute_taps<acc_t>(rois + k * 5, p, batch_size, height, width, is.h, is.w, taps[k]);
    }
  });
  std::vector<std::vector<int64_t>> rois_of_image(batch_size);
  for (int64_t k = 0; k < num_rois; ++k) {
    if (taps[k].batch >= 0) rois_of_image[taps[k].batch].push_back(k);
  }

  at::parallel_for(0, batch_size * channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / channels, c = nc % channels;
      acc_t* gi = grad_input + n * is.n + c * is.c;
      for (const int64_t k : rois_of_image[n]) {
        const RoiTaps<acc_t>& t = taps[k];
        const scalar_t* g = grad + k * gs.n + c * gs.c;
        for (int64_t ph = 0; ph < p.pooled_height; ++ph) {
          for (int64_t pw = 0; pw < p.pooled_width; ++pw) {
            const acc_t gv = static_cast<acc_t>(g[ph * gs.h + pw * gs.w]) / t.count;
            for (int64_t iy = 0; iy < t.grid_h; ++iy) {
              const AxisTap<acc_t>& y = t.ys[ph * t.grid_h + iy];
              if (y.w_lo == acc_t(0) && y.w_hi == acc_t(0)) continue;
              const acc_t g_lo = gv * y.w_lo, g_hi = gv * y.w_hi;
              for (int64_t ix = 0; ix < t.grid_w; ++ix) {
                const AxisTap<acc_t>& x = t.xs[pw * t.grid_w + ix];
                if (x.w_lo == acc_t(0) && x.w_hi == acc_t(0)) continue;  // outside the map, as on CUDA
                gi[y.lo + x.lo] += g_lo * x.w_lo;
                gi[y.lo + x.hi] += g_lo * x.w_hi;
                gi[y.hi + x.lo] += g_hi * x.w_lo;
                gi[y.hi + x.hi] += g_hi * x.w_hi;
              }
            }
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor roi_align_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                         int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  const RoiAlignParams p{spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned};
  check_roi_align_input(input, rois, p, "roi_align");
  const int64_t num_rois = rois.size(0), channels = input.size(1);
  const int64_t height = input.size(2), width = input.size(3);
  at::Tensor out = at::empty({num_rois, channels, pooled_height, pooled_width}, input.options(),
                             memory_format_of(pools_channels_last({input})));
  if (out.numel() == 0) return out;
  if (height == 0 || width == 0) return out.zero_();  // nothing to sample from
  const at::Tensor r = rois_in_acc_dtype(rois, input.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t>(input.const_data_ptr<scalar_t>(), strides_of(input), input.size(0), channels,
                                    height, width,
                                    r.const_data_ptr<acc_t>(), num_rois, p, out.mutable_data_ptr<scalar_t>(),
                                    strides_of(out));
  });
  return out;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                                  bool channels_last) {
  const RoiAlignParams p{spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned};
  check_roi_align_backward_input(grad, rois, p, batch_size, channels, height, width);
  at::Tensor grad_input =
      zero_grad_buffer({batch_size, channels, height, width}, grad.options(), grad.scalar_type(), channels_last);
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input.to(grad.scalar_type());
  const at::Tensor r = rois_in_acc_dtype(rois, grad.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t, acc_t>(grad.const_data_ptr<scalar_t>(), strides_of(grad), r.const_data_ptr<acc_t>(),
                                     rois.size(0), batch_size, channels, height, width, p,
                                     grad_input.mutable_data_ptr<acc_t>(), strides_of(grad_input));
  });
  return grad_input.to(grad.scalar_type());
}

TORCH_LIBRARY_IMPL(resnest_cuda, CPU, m) {
  m.impl("roi_align", &roi_align_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace resnest_cuda
