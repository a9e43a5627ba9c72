// CUDA kernels of the fused BatchNorm ops (batch_norm_act.h). x is read as [N, C, L] in its own layout.
//
// Reductions (statistics, backward sums) are two launches: a partial kernel in which block (channel tile, split s)
// sums its share of the rows into partial[s, c], and a one-block finish kernel that adds the splits in order (so
// results do not depend on the schedule) and writes the per-channel outputs. NCHW: one block per channel and split,
// the block's threads walk the [N, L] plane of the channel. channels_last: a block of 32 channels x 8 rows, the
// channels along the warp (coalesced), the 8 rows summed in shared memory.
// Elementwise passes: a grid-stride loop over the elements in storage order, the channel from the index.
//
// Statistics are sums of x - shift (shift = the channel's first element) in fp32 (fp64 for fp64 x): the variance
// keeps its precision when the mean is large against the spread. Nothing is read back to the host.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <limits>

#include "../../cuda_support.cuh"
#include "../batch_norm_act.h"
#include "affine.cuh"

namespace resnest_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTileChannels = 32;                   // channels_last reductions: channels per block (one warp)
constexpr int kTileRows = kThreads / kTileChannels;  // rows per block

// Sum over the kThreads threads of a 1-D block; the result is valid in thread 0. shared: kThreads / 32 values.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* shared) {
  v = warp_sum(v);
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

// The two per-element terms of a reduction, and the constants each channel's terms use (center).
// Stats:    u = x - shift_c, v = u * u, over the selected rows (shift_c = the channel's first element).
// Backward: u = g, v = g * (x - mean_c), over every row (g = grad_out, zero where the forward's ReLU blocked: read
//           from y, then g is also written to grad_act, or recomputed from x and the affine map).
template <typename scalar_t>
struct StatsTerms {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  const bool* rows;  // nullptr: every row
  int64_t first_stride;  // offset of channel c's first element: c * first_stride
  __device__ __forceinline__ bool row_used(int64_t n) const { return rows == nullptr || rows[n]; }
  __device__ __forceinline__ acc_t center(int64_t c) const { return static_cast<acc_t>(x[c * first_stride]); }
  __device__ __forceinline__ void terms(int64_t i, acc_t center, acc_t& u, acc_t& v) const {
    const acc_t t = static_cast<acc_t>(x[i]) - center;
    u = t;
    v = t * t;
  }
};

template <typename scalar_t>
struct GradTerms {
  using acc_t = at::opmath_type<scalar_t>;
  struct Center {
    acc_t mean, scale, shift;
  };
  const scalar_t* x;
  const scalar_t* grad;
  const scalar_t* y;   // the forward output (mask read from it), or nullptr
  scalar_t* grad_act;  // g written here when y is given
  const scalar_t* more0;  // with y: grad_out2 and grad_out3, further parts of grad_y, or nullptr
  const scalar_t* more1;
  bool relu;
  AffineMap<acc_t> affine;
  __device__ __forceinline__ bool row_used(int64_t) const { return true; }
  __device__ __forceinline__ Center center(int64_t c) const {
    Center k;
    k.mean = affine.mean[c];
    k.scale = k.shift = 0;
    if (relu && y == nullptr) affine.at(c, k.scale, k.shift);
    return k;
  }
  __device__ __forceinline__ void terms(int64_t i, const Center& k, acc_t& u, acc_t& v) const {
    const acc_t xi = static_cast<acc_t>(x[i]);
    acc_t g = static_cast<acc_t>(grad[i]);
    if (more0 != nullptr) g += static_cast<acc_t>(more0[i]);
    if (more1 != nullptr) g += static_cast<acc_t>(more1[i]);
    if (y != nullptr) {
      if (static_cast<acc_t>(y[i]) <= acc_t(0)) g = 0;
      grad_act[i] = static_cast<scalar_t>(g);
    } else if (relu && relu_blocked<scalar_t>(xi, k.scale, k.shift)) {
      g = 0;
    }
    u = g;
    v = g * (xi - k.mean);
  }
};

// NCHW partial sums. Grid (C, splits); block kThreads. Split s covers the flat [N, L] positions
// [s * chunk, (s + 1) * chunk); position p = n * L + l is element (n * C + c) * L + l.
template <typename Terms>
__global__ void partial_nchw_kernel(Terms t, int64_t N, int64_t C, int64_t L, int64_t chunk,
                                    typename Terms::acc_t* __restrict__ partial) {
  using acc_t = typename Terms::acc_t;
  RESNEST_SHARED(acc_t, shared, kThreads / 32);
  const int64_t c = blockIdx.x, s = blockIdx.y;
  const int64_t begin = s * chunk, end = ::min(begin + chunk, N * L);
  const auto center = t.center(c);
  acc_t u_sum = 0, v_sum = 0;
  // Position p = begin + threadIdx.x + k * kThreads, walked as (n, l) without a division per element.
  const int64_t step_n = kThreads / L, step_l = kThreads % L;
  int64_t p = begin + threadIdx.x;
  int64_t n = p / L, l = p - n * L;
  for (; p < end; p += kThreads) {
    if (t.row_used(n)) {
      acc_t u, v;
      t.terms((n * C + c) * L + l, center, u, v);
      u_sum += u;
      v_sum += v;
    }
    n += step_n;
    l += step_l;
    if (l >= L) {
      l -= L;
      ++n;
    }
  }
  u_sum = block_sum(u_sum, shared);
  v_sum = block_sum(v_sum, shared);
  if (threadIdx.x == 0) {
    partial[(s * C + c) * 2] = u_sum;
    partial[(s * C + c) * 2 + 1] = v_sum;
  }
}

// channels_last partial sums. Grid (ceil(C / 32), splits); block (32, kTileRows). Split s covers the positions
// (rows of C channels) [s * chunk, (s + 1) * chunk); position m = n * L + l holds channel c at m * C + c.
template <typename Terms>
__global__ void partial_nhwc_kernel(Terms t, int64_t N, int64_t C, int64_t L, int64_t chunk,
                                    typename Terms::acc_t* __restrict__ partial) {
  using acc_t = typename Terms::acc_t;
  RESNEST_SHARED(acc_t, shared, 2 * kThreads);
  const int64_t c = int64_t(blockIdx.x) * kTileChannels + threadIdx.x, s = blockIdx.y;
  const int64_t begin = s * chunk, end = ::min(begin + chunk, N * L);
  acc_t u_sum = 0, v_sum = 0;
  if (c < C) {
    const auto center = t.center(c);
    for (int64_t m = begin + threadIdx.y; m < end; m += kTileRows) {
      if (!t.row_used(m / L)) continue;
      acc_t u, v;
      t.terms(m * C + c, center, u, v);
      u_sum += u;
      v_sum += v;
    }
  }
  const int slot = threadIdx.y * kTileChannels + threadIdx.x;
  shared[2 * slot] = u_sum;
  shared[2 * slot + 1] = v_sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    acc_t a = 0, b = 0;
    for (int r = 0; r < kTileRows; ++r) {
      a += shared[2 * (r * kTileChannels + threadIdx.x)];
      b += shared[2 * (r * kTileChannels + threadIdx.x) + 1];
    }
    partial[(s * C + c) * 2] = a;
    partial[(s * C + c) * 2 + 1] = b;
  }
}

// Launches the partial kernel of the layout; returns partial [splits, C, 2].
template <typename Terms>
at::Tensor launch_partials(const Terms& t, const BnDims& d, bool cl, const at::Tensor& like) {
  using acc_t = typename Terms::acc_t;
  const int64_t positions = d.N * d.L;
  const int64_t channel_blocks = cl ? (d.C + kTileChannels - 1) / kTileChannels : d.C;
  // Enough splits for about 4 waves of blocks, each split at least 4 rows of work per thread.
  const int64_t target = int64_t(sm_count()) * 4;
  int64_t splits = std::max<int64_t>(1, target / std::max<int64_t>(channel_blocks, 1));
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, positions / ((cl ? kTileRows : kThreads) * 4)));
  splits = std::min<int64_t>(splits, 65535);
  const int64_t chunk = (positions + splits - 1) / splits;
  at::Tensor partial = at::empty({splits, d.C, 2}, like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* pp = partial.mutable_data_ptr<acc_t>();
  TORCH_CHECK(channel_blocks <= std::numeric_limits<int>::max(), "batch_norm: too many channels for one grid");
  if (cl) {
    launch(partial_nhwc_kernel<Terms>, dim3(channel_blocks, splits), dim3(kTileChannels, kTileRows), 0,
           current_stream(), t, d.N, d.C, d.L, chunk, pp);
  } else {
    launch(partial_nchw_kernel<Terms>, dim3(channel_blocks, splits), dim3(kThreads), 0, current_stream(), t, d.N,
           d.C, d.L, chunk, pp);
  }
  return partial;
}

// Statistics from the partial sums (one block): count = selected rows * L; per channel mean = shift + s1 / count,
// var = max(s2 / count - (s1 / count)^2, 0); both 0 when nothing is selected.
template <typename scalar_t>
__global__ void stats_finish_kernel(const at::opmath_type<scalar_t>* __restrict__ partial, const scalar_t* x,
                                    int64_t first_stride, const bool* rows, int64_t N, int64_t C, int64_t L,
                                    int64_t splits, at::opmath_type<scalar_t>* __restrict__ mean,
                                    at::opmath_type<scalar_t>* __restrict__ var,
                                    at::opmath_type<scalar_t>* __restrict__ count_out,
                                    at::opmath_type<scalar_t>* __restrict__ running_mean,
                                    at::opmath_type<scalar_t>* __restrict__ running_var, int64_t* num_batches_tracked,
                                    double momentum) {
  using acc_t = at::opmath_type<scalar_t>;
  RESNEST_SHARED(acc_t, shared, kThreads / 32);
  RESNEST_SHARED(acc_t, count_shared, 1);
  // Read before the first barrier, written by thread 0 after it.
  const int64_t tracked = num_batches_tracked != nullptr ? num_batches_tracked[0] + 1 : 1;
  acc_t used = 0;
  for (int64_t n = threadIdx.x; n < N; n += kThreads) used += (rows == nullptr || rows[n]) ? acc_t(1) : acc_t(0);
  used = block_sum(used, shared);
  if (threadIdx.x == 0) {
    count_shared[0] = used * acc_t(L);
    count_out[0] = count_shared[0];
    if (num_batches_tracked != nullptr) num_batches_tracked[0] = tracked;
  }
  __syncthreads();
  const acc_t count = count_shared[0];
  // The running-statistics update of update_running_stats (batch_norm_act.h), per channel.
  const acc_t factor = count > acc_t(1) ? (momentum >= 0 ? static_cast<acc_t>(momentum) : acc_t(1) / acc_t(tracked))
                                        : acc_t(0);
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    acc_t s1 = 0, s2 = 0;
    for (int64_t s = 0; s < splits; ++s) {
      s1 += partial[(s * C + c) * 2];
      s2 += partial[(s * C + c) * 2 + 1];
    }
    acc_t mc = 0, vc = 0;
    if (count > acc_t(0)) {
      const acc_t m = s1 / count;
      mc = static_cast<acc_t>(x[c * first_stride]) + m;
      vc = ::max(s2 / count - m * m, acc_t(0));
    }
    mean[c] = mc;
    var[c] = vc;
    if (running_mean != nullptr) {
      const acc_t unbiased = count > acc_t(1) ? vc * (count / (count - acc_t(1))) : vc;
      running_mean[c] += factor * (mc - running_mean[c]);
      running_var[c] += factor * (unbiased - running_var[c]);
    }
  }
}

// Backward sums from the partial sums (one block): sum_dy = s1, sum_dy_xhat = s2 * rsqrt(var + eps).
template <typename acc_t>
__global__ void grad_finish_kernel(const acc_t* __restrict__ partial, const acc_t* __restrict__ var, double eps,
                                   int64_t C, int64_t splits, acc_t* __restrict__ sum_dy,
                                   acc_t* __restrict__ sum_dy_xhat) {
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    acc_t s1 = 0, s2 = 0;
    for (int64_t s = 0; s < splits; ++s) {
      s1 += partial[(s * C + c) * 2];
      s2 += partial[(s * C + c) * 2 + 1];
    }
    sum_dy[c] = s1;
    sum_dy_xhat[c] = s2 / ::sqrt(var[c] + static_cast<acc_t>(eps));
  }
}

// Channel and row of element i (storage order of the layout).
template <typename index_t>
struct ElementIndex {
  index_t C, L;
  bool cl;
  __device__ __forceinline__ void at(index_t i, index_t& c, index_t& n) const {
    if (cl) {
      c = i % C;
      n = i / (C * L);
    } else {
      const index_t plane = i / L;
      c = plane % C;
      n = plane / C;
    }
  }
};

// y = act(x * scale_c + shift_c (+ residual)) with the affine map of AffineMap.
template <typename scalar_t, typename index_t>
__global__ void act_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ residual,
                           AffineMap<at::opmath_type<scalar_t>> affine, bool relu, index_t numel,
                           ElementIndex<index_t> ix, scalar_t* __restrict__ y) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t stride = index_t(gridDim.x) * blockDim.x;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    index_t c, n;
    ix.at(i, c, n);
    acc_t scale, shift;
    affine.at(c, scale, shift);
    acc_t t = fused_madd(static_cast<acc_t>(x[i]), scale, shift);
    if (residual != nullptr) t += static_cast<acc_t>(residual[i]);
    if (relu && !(t > acc_t(0)) && t == t) t = 0;  // ReLU keeps NaN, as torch.relu
    y[i] = static_cast<scalar_t>(t);
  }
}

// grad_x = w_c * invstd_c * (g - [row used] (sum_dy_c + xhat * sum_dy_xhat_c) / count); g = grad, zero where the
// forward's ReLU blocked (recomputed from x) when relu.
template <typename scalar_t, typename index_t>
__global__ void backward_input_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                      AffineMap<at::opmath_type<scalar_t>> affine, bool relu,
                                      const at::opmath_type<scalar_t>* __restrict__ sum_dy,
                                      const at::opmath_type<scalar_t>* __restrict__ sum_dy_xhat,
                                      const at::opmath_type<scalar_t>* __restrict__ count, const bool* rows,
                                      index_t numel, ElementIndex<index_t> ix, scalar_t* __restrict__ dx) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t inv_count = acc_t(1) / ::max(count[0], acc_t(1));
  const index_t stride = index_t(gridDim.x) * blockDim.x;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    index_t c, n;
    ix.at(i, c, n);
    const acc_t xi = static_cast<acc_t>(x[i]);
    acc_t g = static_cast<acc_t>(grad[i]);
    const acc_t invstd = affine.invstd(c);
    if (relu) {
      acc_t scale, shift;
      affine.at(c, invstd, scale, shift);
      if (relu_blocked<scalar_t>(xi, scale, shift)) g = 0;
    }
    acc_t t = g;
    if (rows == nullptr || rows[n]) {
      t -= (sum_dy[c] + (xi - affine.mean[c]) * invstd * sum_dy_xhat[c]) * inv_count;
    }
    dx[i] = static_cast<scalar_t>((affine.weight != nullptr ? affine.weight[c] : acc_t(1)) * invstd * t);
  }
}

template <typename Kernel, typename... Args>
void launch_elementwise(Kernel kernel, int64_t numel, Args&&... args) {
  const int64_t wanted = (numel + kThreads - 1) / kThreads;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(wanted, grid_cap(resident_blocks(kernel, kThreads))));
  launch(kernel, dim3(blocks), dim3(kThreads), 0, current_stream(), std::forward<Args>(args)...);
}

// Calls f(index_t) with int32_t when every index fits, int64_t otherwise.
template <typename F>
void with_index_type(int64_t numel, const F& f) {
  if (numel <= std::numeric_limits<int32_t>::max()) {
    f(int32_t(0));
  } else {
    f(int64_t(0));
  }
}

template <typename T>
const T* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

at::Tensor stats_vector(const std::optional<at::Tensor>& t, const at::Tensor& x) {
  return t.has_value() ? t->to(bn_stats_dtype(x)).contiguous() : at::Tensor();
}

struct Prepared {
  at::Tensor x;
  bool cl;
  BnDims d;
};

Prepared prepare(const at::Tensor& x_in, const char* op) {
  check_kernel_device(x_in, op, "x");
  const at::MemoryFormat format = bn_format(x_in);
  const at::Tensor x = x_in.contiguous(format);
  return {x, format == at::MemoryFormat::ChannelsLast, bn_dims(x)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_stats_cuda(
    const at::Tensor& x_in, const std::optional<at::Tensor>& rows_in, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, const std::optional<at::Tensor>& num_batches_tracked,
    double momentum) {
  check_stats_args(x_in, rows_in, running_mean, running_var, num_batches_tracked, momentum);
  const DeviceGuard guard(x_in.device());
  const Prepared p = prepare(x_in, "batch_norm_stats");
  const auto options = p.x.options().dtype(bn_stats_dtype(p.x));
  at::Tensor mean = at::empty({p.d.C}, options), var = at::empty({p.d.C}, options), count = at::empty({}, options);
  const at::Tensor rows = rows_in.has_value() ? rows_in->contiguous() : at::Tensor();
  const bool* pr = optional_ptr<bool>(rows);
  const int64_t first_stride = p.cl ? 1 : p.d.L;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "batch_norm_stats_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* px = p.x.const_data_ptr<scalar_t>();
    at::Tensor partial;
    int64_t splits = 0;
    if (p.d.C > 0 && p.d.N * p.d.L > 0) {
      partial = launch_partials(StatsTerms<scalar_t>{px, pr, first_stride}, p.d, p.cl, p.x);
      splits = partial.size(0);
    }
    // The finish kernel updates running statistics of the statistics dtype itself; others are updated by ATen ops.
    const auto stats_type = c10::CppTypeToScalarType<acc_t>::value;
    const bool in_kernel = running_mean.has_value() && running_mean->scalar_type() == stats_type &&
                           running_var->scalar_type() == stats_type && running_mean->is_contiguous() &&
                           running_var->is_contiguous();
    launch(stats_finish_kernel<scalar_t>, dim3(1), dim3(kThreads), 0, current_stream(),
           splits > 0 ? partial.const_data_ptr<acc_t>() : nullptr, px, first_stride, pr, p.d.N, p.d.C, p.d.L, splits,
           mean.mutable_data_ptr<acc_t>(), var.mutable_data_ptr<acc_t>(), count.mutable_data_ptr<acc_t>(),
           in_kernel ? running_mean->mutable_data_ptr<acc_t>() : nullptr,
           in_kernel ? running_var->mutable_data_ptr<acc_t>() : nullptr,
           in_kernel && num_batches_tracked.has_value() ? num_batches_tracked->mutable_data_ptr<int64_t>() : nullptr,
           momentum);
    if (running_mean.has_value() && !in_kernel) {
      update_running_stats(mean, var, count, running_mean, running_var, num_batches_tracked, momentum);
    }
  });
  return {mean, var, count};
}

at::Tensor batch_norm_act_cuda(const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& var,
                               const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                               const std::optional<at::Tensor>& residual, double eps, bool relu) {
  check_act_args(x_in, mean, var, weight, bias, residual, eps);
  const DeviceGuard guard(x_in.device());
  const Prepared p = prepare(x_in, "batch_norm_act");
  const at::MemoryFormat format = p.cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor res = residual.has_value() ? residual->contiguous(format) : at::Tensor();
  const at::Tensor w = stats_vector(weight, p.x), b = stats_vector(bias, p.x);
  const at::Tensor m = mean.contiguous(), v = var.contiguous();
  at::Tensor y = empty_like_x(p.x);
  const int64_t numel = p.x.numel();
  if (numel == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "batch_norm_act_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_index_type(numel, [&](auto zero) {
      using index_t = decltype(zero);
      const ElementIndex<index_t> ix{index_t(p.d.C), index_t(p.d.L), p.cl};
      const AffineMap<acc_t> affine{m.const_data_ptr<acc_t>(), v.const_data_ptr<acc_t>(), optional_ptr<acc_t>(w),
                                    optional_ptr<acc_t>(b), eps};
      launch_elementwise(act_kernel<scalar_t, index_t>, numel, p.x.const_data_ptr<scalar_t>(),
                         optional_ptr<scalar_t>(res), affine, relu, index_t(numel), ix,
                         y.mutable_data_ptr<scalar_t>());
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_backward_reduce_cuda(
    const at::Tensor& grad_out, const at::Tensor& x_in, const std::optional<at::Tensor>& y_in, const at::Tensor& mean,
    const at::Tensor& var, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    bool relu, const std::optional<at::Tensor>& grad_out2, const std::optional<at::Tensor>& grad_out3) {
  check_backward_reduce_args(grad_out, x_in, y_in, mean, var, weight, bias, eps, relu, grad_out2, grad_out3);
  const DeviceGuard guard(x_in.device());
  const Prepared p = prepare(x_in, "batch_norm_act_backward_reduce");
  const at::MemoryFormat format = p.cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor g = grad_out.contiguous(format);
  const at::Tensor y = y_in.has_value() ? y_in->contiguous(format) : at::Tensor();
  const at::Tensor more0 = grad_out2.has_value() ? grad_out2->contiguous(format) : at::Tensor();
  const at::Tensor more1 = grad_out3.has_value() ? grad_out3->contiguous(format) : at::Tensor();
  const at::Tensor w = stats_vector(weight, p.x), b = stats_vector(bias, p.x);
  const at::Tensor m = mean.contiguous(), v = var.contiguous();
  const auto options = p.x.options().dtype(bn_stats_dtype(p.x));
  at::Tensor sum_dy = at::empty({p.d.C}, options), sum_dy_xhat = at::empty({p.d.C}, options);
  at::Tensor grad_act = y.defined() ? empty_like_x(p.x) : at::empty({0}, p.x.options());
  if (p.d.C == 0) return {sum_dy, sum_dy_xhat, grad_act};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "batch_norm_act_backward_reduce", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor partial;
    int64_t splits = 0;
    if (p.d.N * p.d.L > 0) {
      const AffineMap<acc_t> affine{m.const_data_ptr<acc_t>(), v.const_data_ptr<acc_t>(), optional_ptr<acc_t>(w),
                                    optional_ptr<acc_t>(b), eps};
      const GradTerms<scalar_t> terms{p.x.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
                                      optional_ptr<scalar_t>(y),
                                      y.defined() ? grad_act.mutable_data_ptr<scalar_t>() : nullptr,
                                      optional_ptr<scalar_t>(more0), optional_ptr<scalar_t>(more1), relu, affine};
      partial = launch_partials(terms, p.d, p.cl, p.x);
      splits = partial.size(0);
    }
    launch(grad_finish_kernel<acc_t>, dim3(1), dim3(kThreads), 0, current_stream(),
           splits > 0 ? partial.const_data_ptr<acc_t>() : nullptr, v.const_data_ptr<acc_t>(), eps, p.d.C, splits,
           sum_dy.mutable_data_ptr<acc_t>(), sum_dy_xhat.mutable_data_ptr<acc_t>());
  });
  return {sum_dy, sum_dy_xhat, grad_act};
}

at::Tensor batch_norm_act_backward_input_cuda(const at::Tensor& grad_out, const at::Tensor& x_in,
                                              const at::Tensor& mean, const at::Tensor& var,
                                              const std::optional<at::Tensor>& weight,
                                              const std::optional<at::Tensor>& bias, const at::Tensor& sum_dy,
                                              const at::Tensor& sum_dy_xhat, const at::Tensor& count,
                                              const std::optional<at::Tensor>& rows_in, double eps, bool relu) {
  check_backward_input_args(grad_out, x_in, mean, var, weight, bias, sum_dy, sum_dy_xhat, count, rows_in, eps);
  const DeviceGuard guard(x_in.device());
  const Prepared p = prepare(x_in, "batch_norm_act_backward_input");
  const at::MemoryFormat format = p.cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor g = grad_out.contiguous(format);
  const at::Tensor w = stats_vector(weight, p.x), b = stats_vector(bias, p.x);
  const at::Tensor m = mean.contiguous(), v = var.contiguous(), sdy = sum_dy.contiguous(),
                   sdx = sum_dy_xhat.contiguous();
  const at::Tensor rows = rows_in.has_value() ? rows_in->contiguous() : at::Tensor();
  at::Tensor dx = empty_like_x(p.x);
  const int64_t numel = p.x.numel();
  if (numel == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "batch_norm_act_backward_input", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_index_type(numel, [&](auto zero) {
      using index_t = decltype(zero);
      const ElementIndex<index_t> ix{index_t(p.d.C), index_t(p.d.L), p.cl};
      const AffineMap<acc_t> affine{m.const_data_ptr<acc_t>(), v.const_data_ptr<acc_t>(), optional_ptr<acc_t>(w),
                                    optional_ptr<acc_t>(b), eps};
      launch_elementwise(backward_input_kernel<scalar_t, index_t>, numel, g.const_data_ptr<scalar_t>(),
                         p.x.const_data_ptr<scalar_t>(), affine, relu, sdy.const_data_ptr<acc_t>(),
                         sdx.const_data_ptr<acc_t>(), count.const_data_ptr<acc_t>(), optional_ptr<bool>(rows),
                         index_t(numel), ix, dx.mutable_data_ptr<scalar_t>());
    });
  });
  return dx;
}

}  // namespace

RESNEST_CUDA_KERNELS(m) {
  m.impl("batch_norm_stats", &batch_norm_stats_cuda);
  m.impl("batch_norm_act", &batch_norm_act_cuda);
  m.impl("batch_norm_act_backward_reduce", &batch_norm_act_backward_reduce_cuda);
  m.impl("batch_norm_act_backward_input", &batch_norm_act_backward_input_cuda);
}

}  // namespace resnest_cuda
