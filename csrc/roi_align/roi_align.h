#pragma once
// RoIAlign (aligned=True as in mmcv/detectron2; aligned=False as torchvision's legacy mode): shared input checks,
// per-ROI geometry and declarations for the CPU and CUDA kernels.
//
//   input   [N, C, H, W]  any strides (NCHW, channels_last, or a strided view)
//   rois    [K, 5]        (batch_index, x1, y1, x2, y2) in input-image coordinates, any floating dtype
//   output  [K, C, ph, pw] input's dtype; channels_last when the input is (pools_channels_last), else contiguous
//   grad of input: [N, C, H, W], channels_last when the input is, else contiguous (on every device)
//
// A ROI is mapped onto the feature map with start = coord * spatial_scale - offset (offset 0.5 when aligned,
// else 0 and the ROI size clamped to >= 1). Each of the ph x pw bins averages grid_h x grid_w bilinear samples
// (grid = sampling_ratio, or min(ceil(bin size), kMaxAdaptiveGrid) when sampling_ratio <= 0) over
// max(grid_h * grid_w, 1); a sample outside [-1, H] x [-1, W] contributes 0. A ROI with a non-finite coordinate
// (after scaling) or a batch index outside [0, N) pools to 0 and receives no gradient, on every device.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#ifndef RESNEST_HOST_DEVICE
#if defined(__CUDACC__)
#define RESNEST_HOST_DEVICE __host__ __device__
#else
#define RESNEST_HOST_DEVICE
#endif
#endif

namespace resnest_cuda {

// Cap of the adaptive sampling grid (samples per bin along one axis when sampling_ratio <= 0). Results equal the
// uncapped ceil(bin) rule (mmcv, torchvision) for ROIs up to 64 * output_size feature-map pixels along an axis:
// 448 px for 7x7 bins, i.e. 1792 image pixels even at stride 4, where a 1333-px image spans only 333 px (and FPN
// pools ROIs above 112 px from coarser levels). Larger ROIs take 64 samples per bin, which bounds the work of one
// ROI to output_size^2 * 64^2 samples per channel; uncapped, it grew with the ROI without bound (an infinite ROI
// never finished on the GPU).
constexpr int64_t kMaxAdaptiveGrid = 64;

struct RoiAlignParams {
  double spatial_scale;
  int64_t pooled_height;
  int64_t pooled_width;
  int64_t sampling_ratio;
  bool aligned;
};

template <typename acc_t>
RESNEST_HOST_DEVICE inline acc_t ceil_of(acc_t v) {
#if defined(__CUDA_ARCH__)
  return ::ceil(v);
#else
  return std::ceil(v);
#endif
}

template <typename acc_t>
RESNEST_HOST_DEVICE inline bool is_finite(acc_t v) {
#if defined(__CUDA_ARCH__)
  return ::isfinite(v);
#else
  return std::isfinite(v);
#endif
}

// Samples per bin along one axis. The clamp happens in floating point, before the integer cast: a cast of +inf
// or of a value beyond the int64 range is undefined behaviour (it saturated on the GPU). NaN or a size <= 0: 0.
template <typename acc_t>
RESNEST_HOST_DEVICE inline int64_t adaptive_grid(acc_t bin) {
  if (!(bin > acc_t(0))) return 0;
  const acc_t cap = static_cast<acc_t>(kMaxAdaptiveGrid);
  const acc_t grid = ceil_of(bin);
  return static_cast<int64_t>(grid < cap ? grid : cap);
}

// Image of a ROI in a batch of `batch_size` images, or -1 when its batch index is outside [0, batch_size) or NaN
// (such a ROI pools to 0 and receives no gradient, the same on CPU and CUDA; a fractional index is truncated).
template <typename acc_t>
RESNEST_HOST_DEVICE inline int64_t roi_batch_index(acc_t b, int64_t batch_size) {
  return b >= acc_t(0) && b < static_cast<acc_t>(batch_size) ? static_cast<int64_t>(b) : -1;
}

// Where one ROI falls on the feature map, along both axes.
template <typename acc_t>
struct RoiGeometry {
  acc_t start_y, start_x;  // top-left corner in feature-map coordinates
  acc_t bin_h, bin_w;      // bin size
  int64_t grid_h, grid_w;  // samples per bin along each axis (>= 0)

  // Samples a bin's sum is divided by: grid_h * grid_w, at least 1 (a bin without samples pools to 0).
  RESNEST_HOST_DEVICE int64_t samples() const { return grid_h * grid_w > 0 ? grid_h * grid_w : 1; }
};

template <typename acc_t>
RESNEST_HOST_DEVICE inline RoiGeometry<acc_t> roi_geometry(const acc_t* roi, acc_t scale, int64_t pooled_h,
                                                           int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  const acc_t offset = aligned ? acc_t(0.5) : acc_t(0);
  RoiGeometry<acc_t> g;
  g.start_x = roi[1] * scale - offset;
  g.start_y = roi[2] * scale - offset;
  acc_t roi_w = roi[3] * scale - offset - g.start_x;
  acc_t roi_h = roi[4] * scale - offset - g.start_y;
  // Checked before the legacy size clamp, which would turn a NaN size into 1.
  const bool finite = is_finite(g.start_x) && is_finite(g.start_y) && is_finite(roi_w) && is_finite(roi_h);
  if (!aligned) {
    // Legacy mode: sizes below 1 are raised to 1, so every bin has a positive size.
    roi_w = roi_w > acc_t(1) ? roi_w : acc_t(1);
    roi_h = roi_h > acc_t(1) ? roi_h : acc_t(1);
  }
  g.bin_h = roi_h / static_cast<acc_t>(pooled_h);
  g.bin_w = roi_w / static_cast<acc_t>(pooled_w);
  // An aligned ROI may have zero or negative size: with adaptive sampling it then has no samples and pools to 0.
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(g.bin_h);
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(g.bin_w);
  // A ROI with a non-finite coordinate (after scaling) has no samples: it pools to 0.
  if (!finite) g.grid_h = g.grid_w = 0;
  return g;
}

// The geometry of a ROI on a map of the given scale, with the pooling parameters of `p`.
template <typename acc_t>
RESNEST_HOST_DEVICE inline RoiGeometry<acc_t> roi_geometry(const acc_t* roi, acc_t scale, const RoiAlignParams& p) {
  return roi_geometry<acc_t>(roi, scale, p.pooled_height, p.pooled_width, p.sampling_ratio, p.aligned);
}

// Sample coordinate of sample i (of grid) in bin p along one axis.
template <typename acc_t>
RESNEST_HOST_DEVICE inline acc_t sample_coord(acc_t start, acc_t bin, int64_t p, int64_t i, int64_t grid) {
  return start + static_cast<acc_t>(p) * bin + (static_cast<acc_t>(i) + acc_t(0.5)) * bin / static_cast<acc_t>(grid);
}

// Linear interpolation taps of a coordinate along one axis of length `size`: value = w_lo * v[lo] + w_hi * v[hi].
// Outside [-1, size] (or NaN) both weights are 0.
template <typename acc_t>
struct AxisTap {
  int64_t lo, hi;
  acc_t w_lo, w_hi;
};

template <typename acc_t>
RESNEST_HOST_DEVICE inline AxisTap<acc_t> axis_tap(acc_t v, int64_t size) {
  AxisTap<acc_t> t{0, 0, acc_t(0), acc_t(0)};
  if (!(v >= acc_t(-1) && v <= static_cast<acc_t>(size))) return t;
  if (v <= acc_t(0)) v = acc_t(0);
  t.lo = static_cast<int64_t>(v);
  if (t.lo >= size - 1) {
    t.lo = t.hi = size - 1;
    v = static_cast<acc_t>(t.lo);
  } else {
    t.hi = t.lo + 1;
  }
  const acc_t frac = v - static_cast<acc_t>(t.lo);
  t.w_lo = acc_t(1) - frac;
  t.w_hi = frac;
  return t;
}

// Argument checks: the one place where the RoIAlign arguments are validated. They run on every path: the Python
// wrapper and raw torch.ops calls reach the CPU/CUDA kernels, torch.compile and fake tensors the Meta kernels
// (roi_align.cpp), all of which call these. Shape errors raise ValueError, dtype errors TypeError (Python types).
// Sizes are read as SymInts so that the Meta kernels also check symbolic shapes.
inline void check_roi_align_params(const RoiAlignParams& p, const char* op) {
  TORCH_CHECK_VALUE(p.pooled_height >= 1 && p.pooled_width >= 1, op, ": output_size must be positive, got (",
                    p.pooled_height, ", ", p.pooled_width, ")");
  TORCH_CHECK_VALUE(p.spatial_scale > 0, op, ": spatial_scale must be > 0, got ", p.spatial_scale);
}

inline void check_rois(const at::Tensor& rois, const at::Device& device, const char* op) {
  TORCH_CHECK_VALUE(rois.dim() == 2 && rois.sym_size(1) == 5, op,
                    ": rois must have shape [K, 5] (batch_index, x1, y1, x2, y2), got ", rois.sym_sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(rois.scalar_type()), op,
                   ": rois must be float32/float16/bfloat16/float64, got ", rois.scalar_type());
  TORCH_CHECK_VALUE(rois.device() == device, op, ": rois is on ", rois.device(), " but input is on ", device,
                    "; both must be on one device");
}

inline void check_roi_align_input(const at::Tensor& input, const at::Tensor& rois, const RoiAlignParams& p,
                                  const char* op) {
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": input must be a 4-D tensor [N, C, H, W], got shape ",
                    input.sym_sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), op,
                   ": input must be float32/float16/bfloat16/float64, got ", input.scalar_type());
  check_rois(rois, input.device(), op);
  check_roi_align_params(p, op);
}

// Layout rule of the outputs, the one place it is stated: a channels_last result when every map is channels_last and
// at least one of them is not also plain contiguous (a map with C == 1 or H == W == 1 is both, and does not decide);
// otherwise contiguous NCHW. For roi_align the list is its one input; for the multi-level op, the pyramid levels.
// The Python autograd formulas apply the same rule (detection_ops._channels_last) to choose the layout of each
// input's gradient.
inline bool pools_channels_last(at::TensorList maps) {
  bool all_cl = !maps.empty(), any_strict = false;
  for (const at::Tensor& m : maps) {
    const bool cl = m.dim() == 4 && m.is_contiguous(at::MemoryFormat::ChannelsLast);
    all_cl = all_cl && cl;
    any_strict = any_strict || (cl && !m.is_contiguous());
  }
  return all_cl && any_strict;
}

inline at::MemoryFormat memory_format_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// Accumulation dtype of the gradient buffer: fp32, or fp64 for fp64.
inline at::ScalarType grad_acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// A zero-filled gradient buffer [N, C, H, W] in the accumulation dtype of `dtype` and the given layout.
inline at::Tensor zero_grad_buffer(at::IntArrayRef sizes, const at::TensorOptions& options, at::ScalarType dtype,
                                   bool channels_last) {
  return at::empty(sizes, options.dtype(grad_acc_dtype(dtype)), memory_format_of(channels_last)).zero_();
}

// The layout flags of multi_level_roi_align_backward: one per level, or none (every level contiguous).
inline void check_level_layouts(const c10::List<bool>& channels_last, size_t num_levels, const char* op) {
  TORCH_CHECK_VALUE(channels_last.empty() || channels_last.size() == num_levels, op,
                    ": channels_last needs one flag per level (", num_levels, ") or none, got ", channels_last.size());
}

inline bool level_channels_last(const c10::List<bool>& channels_last, size_t level) {
  return !channels_last.empty() && channels_last.get(level);
}

// rois in the accumulation dtype (fp32, or fp64 for fp64 input), contiguous.
inline at::Tensor rois_in_acc_dtype(const at::Tensor& rois, at::ScalarType input_dtype) {
  const at::ScalarType acc = input_dtype == at::kDouble ? at::kDouble : at::kFloat;
  return rois.to(acc).contiguous();
}

at::Tensor roi_align_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                         int64_t pooled_width, int64_t sampling_ratio, bool aligned);
at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                                  bool channels_last);

// Checks shared by the CPU, CUDA and Meta backward entry points.
inline void check_roi_align_backward_input(const at::Tensor& grad, const at::Tensor& rois, const RoiAlignParams& p,
                                           const c10::SymInt& batch_size, const c10::SymInt& channels,
                                           const c10::SymInt& height, const c10::SymInt& width) {
  const char* op = "roi_align_backward";
  check_rois(rois, grad.device(), op);
  check_roi_align_params(p, op);
  TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()), op, ": grad must be float32/float16/bfloat16/float64, got ",
                   grad.scalar_type());
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.sym_size(0) == rois.sym_size(0) && grad.sym_size(1) == channels &&
                        grad.sym_size(2) == p.pooled_height && grad.sym_size(3) == p.pooled_width,
                    op, ": grad must have shape [", rois.sym_size(0), ", ", channels, ", ", p.pooled_height, ", ",
                    p.pooled_width, "], got ", grad.sym_sizes());
  TORCH_CHECK_VALUE(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0, op,
                    ": the input shape must be non-negative, got [", batch_size, ", ", channels, ", ", height, ", ",
                    width, "]");
}


// ---------------------------------------------------------------------------------------------------------------
// Multi-level RoIAlign: each ROI is pooled from the pyramid level its size maps to (mmdetection's rule),
//   level = clamp(floor(log2(sqrt(w * h) / finest_scale + 1e-6)), 0, num_levels - 1),
// with w, h the ROI's size in image pixels. floor(log2(s)) is taken exactly from the binary exponent of s (frexp),
// so every implementation assigns the same level; s <= 0 or NaN (an empty or degenerate ROI) gives level 0, an
// infinite s the coarsest level.
//
//   features  L tensors [N, C, H_l, W_l], one dtype and device, any strides each
//   rois      [K, 5] as for roi_align; spatial_scales [L] = 1 / stride of each level
//   output    [K, C, ph, pw], layout by pools_channels_last(features); backward: L tensors [N, C, H_l, W_l], level l
//             channels_last when channels_last[l], else contiguous

constexpr int kMaxPyramidLevels = 8;

template <typename acc_t>
RESNEST_HOST_DEVICE inline acc_t sqrt_of(acc_t v) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(v);
#else
  return std::sqrt(v);
#endif
}

// floor(log2(v)) of a finite v > 0, exactly: v = m * 2^e with m in [0.5, 1), so it is e - 1.
template <typename acc_t>
RESNEST_HOST_DEVICE inline int64_t floor_log2(acc_t v) {
  int exponent = 0;
#if defined(__CUDA_ARCH__)
  ::frexp(v, &exponent);
#else
  std::frexp(v, &exponent);
#endif
  return static_cast<int64_t>(exponent) - 1;
}

template <typename acc_t>
RESNEST_HOST_DEVICE inline int64_t pyramid_level(const acc_t* roi, acc_t finest_scale, int64_t num_levels) {
  const acc_t s = sqrt_of<acc_t>((roi[3] - roi[1]) * (roi[4] - roi[2])) / finest_scale + acc_t(1e-6);
  if (!(s > acc_t(0) && s < std::numeric_limits<acc_t>::infinity())) return s > acc_t(0) ? num_levels - 1 : 0;
  const int64_t level = floor_log2<acc_t>(s);
  return level < 0 ? 0 : (level > num_levels - 1 ? num_levels - 1 : level);
}

inline void check_multi_level_params(int64_t num_levels, double finest_scale, const char* op) {
  TORCH_CHECK(num_levels >= 1 && num_levels <= kMaxPyramidLevels, op, ": expected 1 to ", kMaxPyramidLevels,
              " feature levels, got ", num_levels);
  TORCH_CHECK(finest_scale > 0, op, ": finest_scale must be > 0, got ", finest_scale);
}

inline void check_multi_level_input(at::TensorList features, const at::Tensor& rois,
                                    const std::vector<double>& spatial_scales, int64_t pooled_height,
                                    int64_t pooled_width, double finest_scale, const char* op) {
  check_multi_level_params(static_cast<int64_t>(features.size()), finest_scale, op);
  TORCH_CHECK(spatial_scales.size() == features.size(), op, ": expected one spatial scale per feature level (",
              features.size(), "), got ", spatial_scales.size());
  const at::Tensor& first = features[0];
  for (size_t l = 0; l < features.size(); ++l) {
    const at::Tensor& f = features[l];
    TORCH_CHECK(f.dim() == 4, op, ": features[", l, "] must be a 4-D tensor [N, C, H, W], got ", f.dim(), " dims");
    TORCH_CHECK(at::isFloatingType(f.scalar_type()), op, ": features[", l,
                "] must be float64/float32/float16/bfloat16, got ", f.scalar_type());
    TORCH_CHECK(f.scalar_type() == first.scalar_type() && f.device() == first.device(), op, ": features[", l,
                "] is ", f.scalar_type(), " on ", f.device(), " but features[0] is ", first.scalar_type(), " on ",
                first.device());
    TORCH_CHECK(f.size(0) == first.size(0) && f.size(1) == first.size(1), op, ": features[", l, "] has shape ",
                f.sizes(), "; every level needs features[0]'s batch size and channels (", first.size(0), ", ",
                first.size(1), ")");
    check_roi_align_params({spatial_scales[l], pooled_height, pooled_width, 0, true}, op);
  }
  check_rois(rois, first.device(), op);
}

at::Tensor multi_level_roi_align_cpu(at::TensorList features, const at::Tensor& rois,
                                     c10::ArrayRef<double> spatial_scales, int64_t pooled_height, int64_t pooled_width,
                                     double finest_scale, int64_t sampling_ratio, bool aligned);
std::vector<at::Tensor> multi_level_roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                                           c10::ArrayRef<double> spatial_scales,
                                                           int64_t pooled_height, int64_t pooled_width,
                                                           int64_t batch_size, int64_t channels,
                                                           c10::IntArrayRef heights,
                                                           c10::IntArrayRef widths, double finest_scale,
                                                           int64_t sampling_ratio, bool aligned,
                                                           const c10::List<bool>& channels_last);
}  // namespace resnest_cuda
