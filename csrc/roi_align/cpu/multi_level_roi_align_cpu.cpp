// CPU multi-level RoIAlign (see roi_align.h): each ROI's level is picked from its size, then the ROI is pooled from
// that level exactly as roi_align pools it (same geometry, taps and accumulation order), so the result equals
// roi_align on the assigned level bit for bit. Forward runs in parallel over ROIs; backward in parallel over
// (level, image, channel) triples, each owning its slice of one level's gradient, so no two tasks write the same
// element. The output and each level's gradient are written through their strides, in the layouts roi_align.h
// states.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../roi_align.h"

namespace resnest_cuda {
namespace {

// One level's view: data pointer (forward) and element strides.
struct LevelView {
  int64_t height, width;
  int64_t sn, sc, sh, sw;
};

// Interpolation taps of one ROI on its level; tap offsets are multiplied by the level's H (ys) and W (xs) stride.
template <typename acc_t>
struct LevelTaps {
  int64_t level = 0, batch = 0, grid_h = 0, grid_w = 0;
  acc_t count = 1;
  std::vector<AxisTap<acc_t>> ys, xs;
};

template <typename acc_t>
void level_taps(const acc_t* roi, int64_t level, const LevelView& v, acc_t scale, const RoiAlignParams& p,
                int64_t batch_size, LevelTaps<acc_t>& t) {
  const RoiGeometry<acc_t> g = roi_geometry<acc_t>(roi, scale, p);
  t.level = level;
  t.batch = roi_batch_index(roi[0], batch_size);  // -1: outside the batch, pools to 0, no gradient
  t.grid_h = g.grid_h;
  t.grid_w = g.grid_w;
  t.count = static_cast<acc_t>(g.samples());
  t.ys.resize(p.pooled_height * g.grid_h);
  t.xs.resize(p.pooled_width * g.grid_w);
  for (int64_t ph = 0; ph < p.pooled_height; ++ph) {
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      AxisTap<acc_t> a = axis_tap<acc_t>(sample_coord<acc_t>(g.start_y, g.bin_h, ph, iy, g.grid_h), v.height);
      a.lo *= v.sh;
      a.hi *= v.sh;
      t.ys[ph * g.grid_h + iy] = a;
    }
  }
  for (int64_t pw = 0; pw < p.pooled_width; ++pw) {
    for (int64_t ix = 0; ix < g.grid_w; ++ix) {
      AxisTap<acc_t> a = axis_tap<acc_t>(sample_coord<acc_t>(g.start_x, g.bin_w, pw, ix, g.grid_w), v.width);
      a.lo *= v.sw;
      a.hi *= v.sw;
      t.xs[pw * g.grid_w + ix] = a;
    }
  }
}

// Pools one ROI's channels from its level; `base` points at (batch, channel 0) of that level, `out` at the ROI's
// output, whose C, H, W strides are oc, oh, ow.
template <typename scalar_t, typename acc_t>
void pool_roi(const scalar_t* base, int64_t sc, int64_t channels, const LevelTaps<acc_t>& t, const RoiAlignParams& p,
              scalar_t* out, int64_t oc, int64_t oh, int64_t ow) {
  for (int64_t c = 0; c < channels; ++c) {
    const scalar_t* b = base + c * sc;
    scalar_t* o = out + c * oc;
    for (int64_t ph = 0; ph < p.pooled_height; ++ph) {
      for (int64_t pw = 0; pw < p.pooled_width; ++pw) {
        acc_t sum = 0;
        for (int64_t iy = 0; iy < t.grid_h; ++iy) {
          const AxisTap<acc_t>& y = t.ys[ph * t.grid_h + iy];
          if (y.w_lo == acc_t(0) && y.w_hi == acc_t(0)) continue;  // sample row outside the map, as roi_align
          for (int64_t ix = 0; ix < t.grid_w; ++ix) {
            const AxisTap<acc_t>& x = t.xs[pw * t.grid_w + ix];
            const acc_t top =
                x.w_lo * static_cast<acc_t>(b[y.lo + x.lo]) + x.w_hi * static_cast<acc_t>(b[y.lo + x.hi]);
            const acc_t bottom =
                x.w_lo * static_cast<acc_t>(b[y.hi + x.lo]) + x.w_hi * static_cast<acc_t>(b[y.hi + x.hi]);
            sum += y.w_lo * top + y.w_hi * bottom;
          }
        }
        o[ph * oh + pw * ow] = static_cast<scalar_t>(sum / t.count);
      }
    }
  }
}

// grad_level (acc_t, any layout: the taps carry its strides) of one (image, channel) += the transpose of the
// forward interpolation.
template <typename scalar_t, typename acc_t>
void scatter_roi(const scalar_t* g, int64_t gh, int64_t gw, const LevelTaps<acc_t>& t, const RoiAlignParams& p,
                 acc_t* gi) {
  for (int64_t ph = 0; ph < p.pooled_height; ++ph) {
    for (int64_t pw = 0; pw < p.pooled_width; ++pw) {
      const acc_t gv = static_cast<acc_t>(g[ph * gh + pw * gw]) / t.count;
      for (int64_t iy = 0; iy < t.grid_h; ++iy) {
        const AxisTap<acc_t>& y = t.ys[ph * t.grid_h + iy];
        if (y.w_lo == acc_t(0) && y.w_hi == acc_t(0)) continue;  // outside the map: no gradient (a non-finite
        const acc_t g_lo = gv * y.w_lo, g_hi = gv * y.w_hi;         // gv times a zero weight would be NaN)
        for (int64_t ix = 0; ix < t.grid_w; ++ix) {
          const AxisTap<acc_t>& x = t.xs[pw * t.grid_w + ix];
          if (x.w_lo == acc_t(0) && x.w_hi == acc_t(0)) continue;
          gi[y.lo + x.lo] += g_lo * x.w_lo;
          gi[y.lo + x.hi] += g_lo * x.w_hi;
          gi[y.hi + x.lo] += g_hi * x.w_lo;
          gi[y.hi + x.hi] += g_hi * x.w_hi;
        }
      }
    }
  }
}

}  // namespace

at::Tensor multi_level_roi_align_cpu(at::TensorList features, const at::Tensor& rois,
                                     c10::ArrayRef<double> spatial_scales, int64_t pooled_height, int64_t pooled_width,
                                     double finest_scale, int64_t sampling_ratio, bool aligned) {
  const char* op = "multi_level_roi_align";
  const std::vector<double> scales(spatial_scales.begin(), spatial_scales.end());
  check_multi_level_input(features, rois, scales, pooled_height, pooled_width, finest_scale, op);
  const RoiAlignParams p{0.0, pooled_height, pooled_width, sampling_ratio, aligned};
  const at::Tensor& first = features[0];
  const int64_t num_rois = rois.size(0), channels = first.size(1);
  const int64_t num_levels = static_cast<int64_t>(features.size());
  at::Tensor out = at::empty({num_rois, channels, pooled_height, pooled_width}, first.options(),
                             memory_format_of(pools_channels_last(features)));
  if (out.numel() == 0) return out;
  out.zero_();  // ROIs whose level is an empty map pool to 0
  const at::Tensor r = rois_in_acc_dtype(rois, first.scalar_type());
  std::vector<LevelView> views;
  for (const at::Tensor& f : features) {
    views.push_back({f.size(2), f.size(3), f.stride(0), f.stride(1), f.stride(2), f.stride(3)});
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "multi_level_roi_align_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* roi_ptr = r.const_data_ptr<acc_t>();
    std::vector<const scalar_t*> data;
    for (const at::Tensor& f : features) data.push_back(f.const_data_ptr<scalar_t>());
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, num_rois, 1, [&](int64_t begin, int64_t end) {
      LevelTaps<acc_t> t;
      for (int64_t k = begin; k < end; ++k) {
        const acc_t* roi = roi_ptr + k * 5;
        const int64_t level = pyramid_level<acc_t>(roi, static_cast<acc_t>(finest_scale), num_levels);
        const LevelView& v = views[level];
        if (v.height == 0 || v.width == 0) continue;
        level_taps<acc_t>(roi, level, v, static_cast<acc_t>(scales[level]), p, first.size(0), t);
        if (t.batch < 0) continue;
        pool_roi<scalar_t, acc_t>(data[level] + t.batch * v.sn, v.sc, channels, t, p, o + k * out.stride(0),
                                  out.stride(1), out.stride(2), out.stride(3));
      }
    });
  });
  return out;
}

std::vector<at::Tensor> multi_level_roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                                           c10::ArrayRef<double> spatial_scales,
                                                           int64_t pooled_height, int64_t pooled_width,
                                                           int64_t batch_size, int64_t channels,
                                                           c10::IntArrayRef heights,
                                                           c10::IntArrayRef widths, double finest_scale,
                                                           int64_t sampling_ratio, bool aligned,
                                                           const c10::List<bool>& channels_last) {
  const char* op = "multi_level_roi_align_backward";
  const int64_t num_levels = heights.size();
  check_multi_level_params(num_levels, finest_scale, op);
  TORCH_CHECK(widths.size() == heights.size() && spatial_scales.size() == heights.size(), op,
              ": heights, widths and spatial_scales need one entry per level, got ", heights.size(), ", ",
              widths.size(), ", ", spatial_scales.size());
  check_level_layouts(channels_last, heights.size(), op);
  const RoiAlignParams p{1.0, pooled_height, pooled_width, sampling_ratio, aligned};
  check_roi_align_backward_input(grad, rois, p, batch_size, channels, 0, 0);
  std::vector<at::Tensor> grads;
  for (int64_t l = 0; l < num_levels; ++l) {
    TORCH_CHECK(heights[l] >= 0 && widths[l] >= 0 && spatial_scales[l] > 0, op, ": level ", l,
                " needs a non-negative size and a positive spatial scale, got ", heights[l], "x", widths[l],
                ", scale ", spatial_scales[l]);
    grads.push_back(zero_grad_buffer({batch_size, channels, heights[l], widths[l]}, grad.options(),
                                     grad.scalar_type(), level_channels_last(channels_last, l)));
  }
  const int64_t num_rois = rois.size(0);
  if (grad.numel() > 0 && batch_size > 0 && channels > 0) {
    const at::Tensor r = rois_in_acc_dtype(rois, grad.scalar_type());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "multi_level_roi_align_bwd", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const acc_t* roi_ptr = r.const_data_ptr<acc_t>();
      std::vector<LevelTaps<acc_t>> taps(num_rois);
      at::parallel_for(0, num_rois, 16, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          const acc_t* roi = roi_ptr + k * 5;
          const int64_t level = pyramid_level<acc_t>(roi, static_cast<acc_t>(finest_scale), num_levels);
          const at::Tensor& gl = grads[level];
          const LevelView v{heights[level], widths[level], gl.stride(0), gl.stride(1), gl.stride(2), gl.stride(3)};
          level_taps<acc_t>(roi, level, v, static_cast<acc_t>(spatial_scales[level]), p, batch_size, taps[k]);
        }
      });
      std::vector<std::vector<int64_t>> rois_of(num_levels * batch_size);  // (level, image) -> ROIs
      for (int64_t k = 0; k < num_rois; ++k) {
        if (taps[k].batch >= 0 && heights[taps[k].level] > 0 && widths[taps[k].level] > 0) {
          rois_of[taps[k].level * batch_size + taps[k].batch].push_back(k);
        }
      }
      const scalar_t* g = grad.const_data_ptr<scalar_t>();
      std::vector<acc_t*> grad_ptrs;
      for (at::Tensor& gl : grads) grad_ptrs.push_back(gl.mutable_data_ptr<acc_t>());
      at::parallel_for(0, num_levels * batch_size * channels, 1, [&](int64_t begin, int64_t end) {
        for (int64_t lnc = begin; lnc < end; ++lnc) {
          const int64_t l = lnc / (batch_size * channels), nc = lnc % (batch_size * channels);
          const int64_t n = nc / channels, c = nc % channels;
          acc_t* gi = grad_ptrs[l] + n * grads[l].stride(0) + c * grads[l].stride(1);
          for (const int64_t k : rois_of[l * batch_size + n]) {
            scatter_roi<scalar_t, acc_t>(g + k * grad.stride(0) + c * grad.stride(1), grad.stride(2),
                                         grad.stride(3), taps[k], p, gi);
          }
        }
      });
    });
  }
  for (at::Tensor& g : grads) g = g.to(grad.scalar_type());
  return grads;
}

TORCH_LIBRARY_IMPL(resnest_cuda, CPU, m) {
  m.impl("multi_level_roi_align", &multi_level_roi_align_cpu);
  m.impl("multi_level_roi_align_backward", &multi_level_roi_align_backward_cpu);
}

}  // namespace resnest_cuda
