// CPU kernels of the fused BatchNorm ops (batch_norm_act.h). x is read as [N, C, L] in its own layout: NCHW
// (a run of L values per row and channel) or channels_last (a run of C channels per row and position). Reductions
// accumulate in fp32 lanes flushed to fp64 sums and are parallel over channels (NCHW, long runs) or over blocks of
// rows or positions whose partial sums are combined in a fixed order (short runs, channels_last); the elementwise
// passes are parallel over runs. The split into blocks follows torch.get_num_threads(), not the threads that run
// it (at::parallel_for; the extension is built with OpenMP where torch uses it).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../batch_norm_act.h"
#include "affine_cpu.h"

namespace resnest_cuda {
namespace {

// Row flags as bytes (1 = the row's values enter the statistics); every row when there is no mask.
std::vector<uint8_t> row_flags(const std::optional<at::Tensor>& rows, int64_t N) {
  std::vector<uint8_t> flags(N, 1);
  if (rows.has_value()) {
    const at::Tensor r = rows->contiguous();
    const bool* p = r.data_ptr<bool>();
    for (int64_t n = 0; n < N; ++n) flags[n] = p[n] ? 1 : 0;
  }
  return flags;
}

// The layouts as runs of contiguous elements: NCHW as N*C runs of L values of one channel (run(n, c, offset)),
// channels_last as N*L runs of the C channels of one position (run(n, -1, offset)).
struct Runs {
  BnDims d;
  bool cl;
  int64_t count() const { return cl ? d.N * d.L : d.N * d.C; }
  int64_t length() const { return cl ? d.C : d.L; }
  // Row, channel (-1 for a channels_last run) and offset of run k.
  void at(int64_t k, int64_t& n, int64_t& c, int64_t& offset) const {
    n = cl ? k / d.L : k / d.C;
    c = cl ? -1 : k % d.C;
    offset = k * length();
  }
};

constexpr int kLanes = 16;         // independent fp32 partial sums in the reduction loops (they vectorise)
constexpr int64_t kFlush = 4096;   // elements summed in fp32 before they are added to the fp64 totals

// Per-channel fp64 sums over `units` (rows or positions), parallel over blocks of units: add(unit, fa, fb) adds one
// unit's terms to the block's fp32 per-channel sums fa, fb and returns how many elements it added; the fp32 sums go
// to the block's fp64 sums every kFlush elements, and the blocks' sums are added in a fixed order.
template <typename acc_t, typename AddUnit>
void blocked_channel_sums(int64_t units, int64_t C, std::vector<double>& s1, std::vector<double>& s2,
                          const AddUnit& add) {
  const int64_t blocks = std::min<int64_t>(units, std::max<int64_t>(1, at::get_num_threads() * 4));
  std::vector<double> p1(blocks * C, 0.0), p2(blocks * C, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> fa(C), fb(C);
    for (int64_t blk = begin; blk < end; ++blk) {
      double* qa = p1.data() + blk * C;
      double* qb = p2.data() + blk * C;
      auto flush = [&] {
        for (int64_t c = 0; c < C; ++c) {
          qa[c] += fa[c];
          qb[c] += fb[c];
          fa[c] = fb[c] = 0;
        }
      };
      std::fill(fa.begin(), fa.end(), acc_t(0));
      std::fill(fb.begin(), fb.end(), acc_t(0));
      int64_t pending = 0;
      for (int64_t unit = blk * units / blocks; unit < (blk + 1) * units / blocks; ++unit) {
        pending += add(unit, fa.data(), fb.data());
        if (pending >= kFlush) {
          flush();
          pending = 0;
        }
      }
      flush();
    }
  });
  for (int64_t blk = 0; blk < blocks; ++blk) {
    for (int64_t c = 0; c < C; ++c) {
      s1[c] += p1[blk * C + c];
      s2[c] += p2[blk * C + c];
    }
  }
}

// Sum of terms(base + l, c, u, v) over l in [0, length) (a run of channel c), in kLanes fp32 lanes, added to *ra,
// *rb.
template <typename acc_t, typename Terms>
inline void run_lane_sums(int64_t base, int64_t length, int64_t c, const Terms& terms, acc_t* ra, acc_t* rb) {
  acc_t la[kLanes] = {}, lb[kLanes] = {};
  int64_t l = 0;
  for (; l + kLanes <= length; l += kLanes) {
    // Kept a loop: fully unrolled, the compiler vectorises the outer loop instead, across runs of kLanes elements
    // (a 16-way interleaved access, several times slower); as a loop it is kLanes contiguous elements in vectors.
    // ivdep: a term that also writes an output (the backward's g) writes element i alone, so nothing aliases.
#pragma GCC unroll 1
#pragma GCC ivdep
    for (int j = 0; j < kLanes; ++j) {
      acc_t u, v;
      terms(base + l + j, c, u, v);
      la[j] += u;
      lb[j] += v;
    }
  }
  acc_t a = 0, b = 0;
  for (; l < length; ++l) {
    acc_t u, v;
    terms(base + l, c, u, v);
    a += u;
    b += v;
  }
  for (int j = 0; j < kLanes; ++j) {
    a += la[j];
    b += lb[j];
  }
  *ra += a;
  *rb += b;
}

// Per-channel sums of two terms, s1[c] = sum u and s2[c] = sum v over the elements of the rows n with use[n], where
// terms(i, c, u, v) gives the terms of element i of channel c (the terms read their per-channel constants from
// arrays indexed by c: contiguous for the channels_last loop), accumulated in fp32 lanes and fp32 partial sums
// flushed to fp64 (long sums keep their precision). NCHW with long runs: parallel over channels, each channel's
// lanes kept across its runs; NCHW with short runs (RoI heads, small maps): rows in memory order, each (row,
// channel) run summed in lanes; channels_last: positions in memory order, one term per channel.
template <typename acc_t, typename Terms>
void lane_sums(const BnDims& d, bool cl, const std::vector<uint8_t>& use,
               std::vector<double>& s1, std::vector<double>& s2, const Terms& terms) {
  s1.assign(d.C, 0.0);
  s2.assign(d.C, 0.0);
  if (d.N == 0 || d.C == 0 || d.L == 0) return;
  if (cl) {
    blocked_channel_sums<acc_t>(d.N * d.L, d.C, s1, s2, [&](int64_t pos, acc_t* fa, acc_t* fb) -> int64_t {
      if (!use[pos / d.L]) return 0;
      const int64_t base = pos * d.C;
#pragma GCC ivdep
      for (int64_t c = 0; c < d.C; ++c) {
        acc_t u, v;
        terms(base + c, c, u, v);
        fa[c] += u;
        fb[c] += v;
      }
      return d.C;
    });
    return;
  }
  if (d.L < 1024) {
    blocked_channel_sums<acc_t>(d.N, d.C, s1, s2, [&](int64_t n, acc_t* fa, acc_t* fb) -> int64_t {
      if (!use[n]) return 0;
      for (int64_t c = 0; c < d.C; ++c) run_lane_sums<acc_t>((n * d.C + c) * d.L, d.L, c, terms, fa + c, fb + c);
      return d.C * d.L;
    });
    return;
  }
  at::parallel_for(0, d.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double ta = 0, tb = 0;
      for (int64_t n = 0; n < d.N; ++n) {
        if (!use[n]) continue;
        for (int64_t start = 0; start < d.L; start += kFlush) {  // kFlush elements per fp32 partial sum
          acc_t a = 0, b = 0;
          run_lane_sums<acc_t>((n * d.C + c) * d.L + start, std::min<int64_t>(kFlush, d.L - start), c, terms,
                               &a, &b);
          ta += a;
          tb += b;
        }
      }
      s1[c] = ta;
      s2[c] = tb;
    }
  });
}

// body(n, c, offset, length) over every run, parallel over runs (c = -1: a channels_last run of all C channels).
template <typename Body>
void for_each_run(const BnDims& d, bool cl, const Body& body) {
  if (d.N == 0 || d.C == 0 || d.L == 0) return;
  const Runs runs{d, cl};
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(runs.length(), 1));
  at::parallel_for(0, runs.count(), grain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      int64_t n, c, offset;
      runs.at(k, n, c, offset);
      body(n, c, offset, runs.length());
    }
  });
}


// f(std::true_type) or f(std::false_type) as `flag`: a layout (channels_last run: one channel per element) or ReLU
// becomes a compile-time constant in the loops, which then vectorise.
template <typename F>
inline void with_flag(bool flag, const F& f) {
  if (flag) {
    f(std::true_type());
  } else {
    f(std::false_type());
  }
}

// The backward passes grad where y <= 0 is false, as torch's ReLU backward.
template <typename acc_t>
inline acc_t relu_grad(acc_t g, acc_t y) {
  return y <= acc_t(0) ? acc_t(0) : g;
}

// The forward's ReLU mask at x from the affine map: y <= 0 for y = relu(x * scale + shift) in scalar_t (the cast
// keeps the sign, so this is the cast value's sign; NaN passes, as torch's ReLU backward).
template <typename scalar_t, typename acc_t>
inline bool relu_blocked(acc_t x, acc_t scale, acc_t shift) {
  return static_cast<acc_t>(static_cast<scalar_t>(x * scale + shift)) <= acc_t(0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_stats_cpu(
    const at::Tensor& x_in, const std::optional<at::Tensor>& rows, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, const std::optional<at::Tensor>& num_batches_tracked,
    double momentum) {
  check_stats_args(x_in, rows, running_mean, running_var, num_batches_tracked, momentum);
  const at::MemoryFormat format = bn_format(x_in);
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(format);
  const BnDims d = bn_dims(x);
  const std::vector<uint8_t> use = row_flags(rows, d.N);
  int64_t valid = 0;
  for (uint8_t u : use) valid += u;
  const double count = double(valid) * double(d.L);
  std::vector<double> shift(d.C, 0.0), s1, s2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_stats_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* px = x.data_ptr<scalar_t>();
    // Sums of x - shift, shift = a value of the channel (its first element): the variance keeps its precision
    // when the mean is large against the spread.
    if (d.N > 0 && d.L > 0) {
      for (int64_t c = 0; c < d.C; ++c) shift[c] = static_cast<double>(px[cl ? c : c * d.L]);
    }
    std::vector<acc_t> shift_a(shift.begin(), shift.end());
    const acc_t* sa = shift_a.data();
    lane_sums<acc_t>(d, cl, use, s1, s2, [px, sa](int64_t i, int64_t c, acc_t& u, acc_t& v) {
      const acc_t t = static_cast<acc_t>(px[i]) - sa[c];
      u = t;
      v = t * t;
    });
  });
  const auto options = x.options().dtype(at::kDouble);
  at::Tensor mean = at::zeros({d.C}, options), var = at::zeros({d.C}, options);
  double* pm = mean.data_ptr<double>();
  double* pv = var.data_ptr<double>();
  if (count > 0) {
    for (int64_t c = 0; c < d.C; ++c) {
      const double m = s1[c] / count;
      pm[c] = shift[c] + m;
      pv[c] = std::max(s2[c] / count - m * m, 0.0);
    }
  }
  const at::ScalarType out = bn_stats_dtype(x);
  at::Tensor count_t = at::scalar_tensor(count, options);
  const bool plain = running_mean.has_value() && running_mean->is_contiguous() && running_var->is_contiguous() &&
                     running_mean->scalar_type() == running_var->scalar_type() &&
                     (running_mean->scalar_type() == at::kFloat || running_mean->scalar_type() == at::kDouble);
  if (plain) {
    // update_running_stats (batch_norm_act.h) as one loop over the channels.
    int64_t tracked = 1;
    if (num_batches_tracked.has_value()) {
      num_batches_tracked->add_(1);
      tracked = num_batches_tracked->item<int64_t>();
    }
    const double factor = count > 1 ? (momentum >= 0 ? momentum : 1.0 / double(tracked)) : 0.0;
    const double unbias = count > 1 ? count / (count - 1) : 1.0;
    AT_DISPATCH_FLOATING_TYPES(running_mean->scalar_type(), "batch_norm_running_stats", [&] {
      scalar_t* rm = running_mean->data_ptr<scalar_t>();
      scalar_t* rv = running_var->data_ptr<scalar_t>();
      for (int64_t c = 0; c < d.C; ++c) {
        rm[c] = static_cast<scalar_t>(rm[c] + factor * (pm[c] - rm[c]));
        rv[c] = static_cast<scalar_t>(rv[c] + factor * (pv[c] * unbias - rv[c]));
      }
    });
  } else {
    update_running_stats(mean, var, count_t, running_mean, running_var, num_batches_tracked, momentum);
  }
  if (out == at::kDouble) return {mean, var, count_t};
  return {mean.to(out), var.to(out), count_t.to(out)};
}

at::Tensor batch_norm_act_cpu(const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& var,
                              const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                              const std::optional<at::Tensor>& residual, double eps, bool relu) {
  check_act_args(x_in, mean, var, weight, bias, residual, eps);
  const at::MemoryFormat format = bn_format(x_in);
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(format);
  const at::Tensor res = residual.has_value() ? residual->contiguous(format) : at::Tensor();
  const BnDims d = bn_dims(x);
  std::vector<double> scale, shift;
  affine_of(mean, var, weight, bias, eps, d.C, scale, shift);
  at::Tensor y = empty_like_x(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<acc_t> sc(scale.begin(), scale.end()), sh(shift.begin(), shift.end());
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* pr = res.defined() ? res.data_ptr<scalar_t>() : nullptr;
    scalar_t* py = y.data_ptr<scalar_t>();
    for_each_run(d, cl, [&](int64_t, int64_t c, int64_t offset, int64_t length) {
      const scalar_t* __restrict__ xr = px + offset;
      const scalar_t* __restrict__ rr = pr != nullptr ? pr + offset : nullptr;
      scalar_t* __restrict__ yr = py + offset;
      const acc_t* __restrict__ scp = sc.data();
      const acc_t* __restrict__ shp = sh.data();
      // One loop per case, the layout a compile-time constant: the compiler vectorises each.
      with_flag(c < 0, [&](auto layout) {
        constexpr bool CL = decltype(layout)::value;
        const int64_t c0 = c < 0 ? 0 : c;
        if (rr != nullptr && relu) {
          for (int64_t i = 0; i < length; ++i) {
            const int64_t k = c0 + (CL ? i : 0);
            yr[i] = static_cast<scalar_t>(
                relu_of<acc_t>(static_cast<acc_t>(xr[i]) * scp[k] + shp[k] + static_cast<acc_t>(rr[i])));
          }
        } else if (rr != nullptr) {
          for (int64_t i = 0; i < length; ++i) {
            const int64_t k = c0 + (CL ? i : 0);
            yr[i] = static_cast<scalar_t>(static_cast<acc_t>(xr[i]) * scp[k] + shp[k] + static_cast<acc_t>(rr[i]));
          }
        } else if (relu) {
          for (int64_t i = 0; i < length; ++i) {
            const int64_t k = c0 + (CL ? i : 0);
            yr[i] = static_cast<scalar_t>(relu_of<acc_t>(static_cast<acc_t>(xr[i]) * scp[k] + shp[k]));
          }
        } else {
          for (int64_t i = 0; i < length; ++i) {
            const int64_t k = c0 + (CL ? i : 0);
            yr[i] = static_cast<scalar_t>(static_cast<acc_t>(xr[i]) * scp[k] + shp[k]);
          }
        }
      });
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_backward_reduce_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const std::optional<at::Tensor>& y_in,
    const at::Tensor& mean, const at::Tensor& var, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, bool relu, const std::optional<at::Tensor>& grad_out2,
    const std::optional<at::Tensor>& grad_out3) {
  check_backward_reduce_args(grad_out_in, x_in, y_in, mean, var, weight, bias, eps, relu, grad_out2, grad_out3);
  const at::MemoryFormat format = bn_format(x_in);
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(format), go = grad_out_in.contiguous(format);
  const int64_t extra = grad_out3.has_value() ? 2 : grad_out2.has_value() ? 1 : 0;
  const at::Tensor more0 = extra > 0 ? grad_out2->contiguous(format) : at::Tensor();
  const at::Tensor more1 = extra > 1 ? grad_out3->contiguous(format) : at::Tensor();
  const bool from_y = y_in.has_value();
  const at::Tensor y = from_y ? y_in->contiguous(format) : at::Tensor();
  at::Tensor grad_act = from_y ? empty_like_x(x) : at::empty({0}, x.options());
  const BnDims d = bn_dims(x);
  const std::vector<double> m = to_vector(mean), v = to_vector(var);
  std::vector<double> scale, shift;
  affine_of(mean, var, weight, bias, eps, d.C, scale, shift);
  const std::vector<uint8_t> every(d.N, 1);
  std::vector<double> s1, s2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_backward_reduce", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<acc_t> m_a(m.begin(), m.end()), sc_a(scale.begin(), scale.end()),
        sh_a(shift.begin(), shift.end());
    const acc_t* ma = m_a.data();
    const acc_t* sca = sc_a.data();
    const acc_t* sha = sh_a.data();
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* pg = go.data_ptr<scalar_t>();
    const scalar_t* py = from_y ? y.data_ptr<scalar_t>() : nullptr;
    scalar_t* pa = from_y ? grad_act.data_ptr<scalar_t>() : nullptr;
    const scalar_t* pm0 = extra > 0 ? more0.data_ptr<scalar_t>() : nullptr;
    const scalar_t* pm1 = extra > 1 ? more1.data_ptr<scalar_t>() : nullptr;
    // 0: no ReLU; 1: mask recomputed from x; 2, 3, 4: mask read from y, g written, with 0, 1, 2 more gradients
    // (g is the sum of grad_out and them, in acc_t, then masked).
    const int mode = !relu ? 0 : (from_y ? 2 + static_cast<int>(extra) : 1);
    auto sums = [&](auto mode_constant) {
      constexpr int MODE = decltype(mode_constant)::value;
      lane_sums<acc_t>(d, cl, every, s1, s2, [px, pg, py, pa, pm0, pm1, ma, sca, sha](int64_t i, int64_t c, acc_t& u,
                                                                                      acc_t& w) {
        const acc_t xi = static_cast<acc_t>(px[i]);
        acc_t g = static_cast<acc_t>(pg[i]);
        if constexpr (MODE >= 3) g += static_cast<acc_t>(pm0[i]);
        if constexpr (MODE == 4) g += static_cast<acc_t>(pm1[i]);
        if constexpr (MODE == 1) {
          if (relu_blocked<scalar_t>(xi, sca[c], sha[c])) g = acc_t(0);
        } else if constexpr (MODE >= 2) {
          g = relu_grad<acc_t>(g, static_cast<acc_t>(py[i]));
          pa[i] = static_cast<scalar_t>(g);
        }
        u = g;
        w = g * (xi - ma[c]);
      });
    };
    if (mode == 0) {
      sums(std::integral_constant<int, 0>());
    } else if (mode == 1) {
      sums(std::integral_constant<int, 1>());
    } else if (mode == 2) {
      sums(std::integral_constant<int, 2>());
    } else if (mode == 3) {
      sums(std::integral_constant<int, 3>());
    } else {
      sums(std::integral_constant<int, 4>());
    }
  });
  const auto options = x.options().dtype(at::kDouble);
  at::Tensor sum_dy = at::empty({d.C}, options), sum_dy_xhat = at::empty({d.C}, options);
  for (int64_t c = 0; c < d.C; ++c) {
    sum_dy.data_ptr<double>()[c] = s1[c];
    sum_dy_xhat.data_ptr<double>()[c] = s2[c] / std::sqrt(v[c] + eps);
  }
  const at::ScalarType out = bn_stats_dtype(x);
  return {sum_dy.to(out), sum_dy_xhat.to(out), grad_act};
}

at::Tensor batch_norm_act_backward_input_cpu(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                             const at::Tensor& mean, const at::Tensor& var,
                                             const std::optional<at::Tensor>& weight,
                                             const std::optional<at::Tensor>& bias, const at::Tensor& sum_dy,
                                             const at::Tensor& sum_dy_xhat, const at::Tensor& count,
                                             const std::optional<at::Tensor>& rows, double eps, bool relu) {
  check_backward_input_args(grad_out_in, x_in, mean, var, weight, bias, sum_dy, sum_dy_xhat, count, rows, eps);
  const at::MemoryFormat format = bn_format(x_in);
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(format), go = grad_out_in.contiguous(format);
  const BnDims d = bn_dims(x);
  const std::vector<double> m = to_vector(mean), v = to_vector(var), w = to_vector(weight, d.C, 1.0);
  const std::vector<double> sdy = to_vector(sum_dy), sdx = to_vector(sum_dy_xhat);
  std::vector<double> scale, shift;
  affine_of(mean, var, weight, bias, eps, d.C, scale, shift);
  const std::vector<uint8_t> use = row_flags(rows, d.N);
  const double n = std::max(count.item<double>(), 1.0);
  // grad_x = wi * (g - [row used] * (k1 + (x - mean) * k2)), wi = weight * invstd; for a row that is not used
  // k1 = k2 = 0 (the second half of each table).
  std::vector<double> wi(d.C), k1(2 * d.C, 0.0), k2(2 * d.C, 0.0);
  for (int64_t c = 0; c < d.C; ++c) {
    const double invstd = 1.0 / std::sqrt(v[c] + eps);
    wi[c] = w[c] * invstd;
    k1[c] = sdy[c] / n;
    k2[c] = sdx[c] / n * invstd;
  }
  at::Tensor grad_x = empty_like_x(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_act_backward_input", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<acc_t> wi_a(wi.begin(), wi.end()), k1_a(k1.begin(), k1.end()), k2_a(k2.begin(), k2.end()),
        m_a(m.begin(), m.end()), sc_a(scale.begin(), scale.end()), sh_a(shift.begin(), shift.end());
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* pg = go.data_ptr<scalar_t>();
    scalar_t* pdx = grad_x.data_ptr<scalar_t>();
    for_each_run(d, cl, [&](int64_t row, int64_t c, int64_t offset, int64_t length) {
      const int64_t c0 = c < 0 ? 0 : c;
      const int64_t unused = use[row] ? 0 : d.C;  // k1, k2 from the zero half for an unused row
      // g = grad where the ReLU passed (mask recomputed from x); grad_x = wi * (g - (k1 + (x - mean) * k2)); the
      // layout and ReLU are compile-time constants and every pointer a local restrict pointer, so the loop
      // vectorises.
      with_flag(c < 0, [&](auto layout) {
        constexpr bool CL = decltype(layout)::value;
        const scalar_t* __restrict__ xa = px + offset;
        const scalar_t* __restrict__ ga = pg + offset;
        scalar_t* __restrict__ dxa = pdx + offset;
        const acc_t* __restrict__ wa = wi_a.data() + c0;
        const acc_t* __restrict__ ma = m_a.data() + c0;
        const acc_t* __restrict__ sca = sc_a.data() + c0;
        const acc_t* __restrict__ sha = sh_a.data() + c0;
        const acc_t* __restrict__ k1a = k1_a.data() + c0 + unused;
        const acc_t* __restrict__ k2a = k2_a.data() + c0 + unused;
        with_flag(relu, [&](auto relu_flag) {
          constexpr bool RELU = decltype(relu_flag)::value;
          for (int64_t i = 0; i < length; ++i) {
            const int64_t k = CL ? i : 0;
            const acc_t xi = static_cast<acc_t>(xa[i]);
            acc_t g = static_cast<acc_t>(ga[i]);
            if (RELU && relu_blocked<scalar_t>(xi, sca[k], sha[k])) g = acc_t(0);
            dxa[i] = static_cast<scalar_t>(wa[k] * (g - (k1a[k] + (xi - ma[k]) * k2a[k])));
          }
        });
      });
    });
  });
  return grad_x;
}

}  // namespace
}  // namespace resnest_cuda

TORCH_LIBRARY_IMPL(resnest_cuda, CPU, m) {
  m.impl("batch_norm_stats", &resnest_cuda::batch_norm_stats_cpu);
  m.impl("batch_norm_act", &resnest_cuda::batch_norm_act_cpu);
  m.impl("batch_norm_act_backward_reduce", &resnest_cuda::batch_norm_act_backward_reduce_cpu);
  m.impl("batch_norm_act_backward_input", &resnest_cuda::batch_norm_act_backward_input_cpu);
}
