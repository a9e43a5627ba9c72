// CPU kernels of the fused split-attention ops: parallel over rows with at::parallel_for, accumulation in
// at::opmath_type (fp32 for half/bfloat16/float, fp64 for double). Both NCHW and channels_last are handled
// without layout conversion of x.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../../batch_norm/cpu/affine_cpu.h"
#include "../split_attention.h"

namespace resnest_cuda {
namespace {

constexpr int64_t kChannelBlock = 64;  // channels handled together by one task in channels_last loops

struct Dims {
  int64_t B, R, C, K, HW;
};

Dims dims_of(const at::Tensor& x, int64_t radix, int64_t cardinality) {
  return {x.size(0), radix, x.size(1) / radix, cardinality, x.size(2) * x.size(3)};
}

// att[b, r, j] (radix-major, [B, R, C]) from cardinal-major logits: softmax over r, or sigmoid when R == 1.
template <typename scalar_t, typename acc_t>
std::vector<acc_t> attention_weights(const scalar_t* logits, const Dims& d) {
  std::vector<acc_t> att(d.B * d.R * d.C);
  const int64_t ck = d.C / d.K;
  at::parallel_for(0, d.B * d.K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bk = begin; bk < end; ++bk) {
      const int64_t b = bk / d.K, k = bk % d.K;
      const scalar_t* lg = logits + b * d.R * d.C + k * d.R * ck;  // [R, C/K]
      for (int64_t c = 0; c < ck; ++c) {
        const int64_t j = k * ck + c;
        if (d.R == 1) {
          const acc_t v = static_cast<acc_t>(lg[c]);
          att[b * d.C + j] = acc_t(1) / (acc_t(1) + std::exp(-v));
          continue;
        }
        acc_t m = -std::numeric_limits<acc_t>::infinity();
        for (int64_t r = 0; r < d.R; ++r) m = std::max(m, static_cast<acc_t>(lg[r * ck + c]));
        acc_t sum = 0;
        for (int64_t r = 0; r < d.R; ++r) {
          const acc_t e = std::exp(static_cast<acc_t>(lg[r * ck + c]) - m);
          att[(b * d.R + r) * d.C + j] = e;
          sum += e;
        }
        for (int64_t r = 0; r < d.R; ++r) att[(b * d.R + r) * d.C + j] /= sum;
      }
    }
  });
  return att;
}

// How a kernel reads its activation x: as it is (Plain), or as the output of the BatchNorm + ReLU that x is the
// input of (NormRelu: u = relu(x * scale_c + shift_c) rounded to x's dtype, bit for bit what batch_norm_act would
// have written; the split_attention_norm_* ops). channel(c) gives the reader of x channel c (of R*C).
template <typename scalar_t>
struct Plain {
  using acc_t = at::opmath_type<scalar_t>;
  struct Channel {
    acc_t operator()(scalar_t v) const { return static_cast<acc_t>(v); }
  };
  Channel channel(int64_t) const { return {}; }
};

template <typename scalar_t>
struct NormRelu {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> scale, shift;  // [R*C]
  struct Channel {
    acc_t scale, shift;
    acc_t operator()(scalar_t v) const { return relu_affine<scalar_t, acc_t>(v, scale, shift); }
  };
  Channel channel(int64_t c) const { return {scale[c], shift[c]}; }
};

// The affine map of the BatchNorm before x (affine_of: the one the BatchNorm kernels use), in the kernels' acc_t.
template <typename scalar_t>
NormRelu<scalar_t> norm_relu(const at::Tensor& mean, const at::Tensor& var, const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& bias, double eps, int64_t channels) {
  std::vector<double> scale, shift;
  affine_of(mean, var, weight, bias, eps, channels, scale, shift);
  NormRelu<scalar_t> n;
  n.scale.assign(scale.begin(), scale.end());
  n.shift.assign(shift.begin(), shift.end());
  return n;
}

template <typename scalar_t, typename acc_t, typename F>
acc_t row_sum(const scalar_t* p, int64_t n, const F& f) {
  acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += f(p[i]);
    s1 += f(p[i + 1]);
    s2 += f(p[i + 2]);
    s3 += f(p[i + 3]);
  }
  for (; i < n; ++i) s0 += f(p[i]);
  return (s0 + s1) + (s2 + s3);
}

// sum_i p[i] * f(q[i])
template <typename scalar_t, typename acc_t, typename F>
acc_t row_dot(const scalar_t* p, const scalar_t* q, int64_t n, const F& f) {
  acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += static_cast<acc_t>(p[i]) * f(q[i]);
    s1 += static_cast<acc_t>(p[i + 1]) * f(q[i + 1]);
    s2 += static_cast<acc_t>(p[i + 2]) * f(q[i + 2]);
    s3 += static_cast<acc_t>(p[i + 3]) * f(q[i + 3]);
  }
  for (; i < n; ++i) s0 += static_cast<acc_t>(p[i]) * f(q[i]);
  return (s0 + s1) + (s2 + s3);
}

// ---------------------------------------------------------------------------------------------------------
// pool: gap[b, j] = mean_hw sum_r x[b, r*C + j]

template <typename scalar_t, typename Reader>
void pool_kernel(const scalar_t* x, scalar_t* gap, const Dims& d, bool channels_last, const Reader& reader) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(d.HW);
  if (!channels_last) {
    at::parallel_for(0, d.B * d.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / d.C, j = row % d.C;
        acc_t s = 0;
        for (int64_t r = 0; r < d.R; ++r) {
          s += row_sum<scalar_t, acc_t>(x + ((b * d.R + r) * d.C + j) * d.HW, d.HW, reader.channel(r * d.C + j));
        }
        gap[row] = static_cast<scalar_t>(s * inv_hw);
      }
    });
    return;
  }
  const int64_t nblk = (d.C + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, d.B * nblk, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(kChannelBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nblk, j0 = (task % nblk) * kChannelBlock;
      const int64_t nc = std::min(kChannelBlock, d.C - j0);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t hw = 0; hw < d.HW; ++hw) {
        const scalar_t* px = x + (b * d.HW + hw) * d.R * d.C + j0;
        for (int64_t r = 0; r < d.R; ++r) {
          for (int64_t c = 0; c < nc; ++c) acc[c] += reader.channel(r * d.C + j0 + c)(px[r * d.C + c]);
        }
      }
      for (int64_t c = 0; c < nc; ++c) gap[b * d.C + j0 + c] = static_cast<scalar_t>(acc[c] * inv_hw);
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// combine: out[b, j] = sum_r att[b, r, j] * x[b, r*C + j]

template <typename scalar_t, typename Reader>
void combine_kernel(const scalar_t* x, const scalar_t* logits, scalar_t* out, const Dims& d, bool channels_last,
                    const Reader& reader) {
  using acc_t = at::opmath_type<scalar_t>;
  const std::vector<acc_t> att = attention_weights<scalar_t, acc_t>(logits, d);
  if (!channels_last) {
    at::parallel_for(0, d.B * d.C, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(d.HW);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / d.C, j = row % d.C;
        for (int64_t r = 0; r < d.R; ++r) {
          const acc_t a = att[(b * d.R + r) * d.C + j];
          const scalar_t* px = x + ((b * d.R + r) * d.C + j) * d.HW;
          const auto u = reader.channel(r * d.C + j);
          if (r == 0) {
            for (int64_t i = 0; i < d.HW; ++i) acc[i] = a * u(px[i]);
          } else {
            for (int64_t i = 0; i < d.HW; ++i) acc[i] += a * u(px[i]);
          }
        }
        scalar_t* po = out + row * d.HW;
        for (int64_t i = 0; i < d.HW; ++i) po[i] = static_cast<scalar_t>(acc[i]);
      }
    });
    return;
  }
  at::parallel_for(0, d.B * d.HW, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(d.C);
    for (int64_t pix = begin; pix < end; ++pix) {
      const int64_t b = pix / d.HW;
      const scalar_t* px = x + pix * d.R * d.C;
      for (int64_t r = 0; r < d.R; ++r) {
        const acc_t* a = att.data() + (b * d.R + r) * d.C;
        if (r == 0) {
          for (int64_t j = 0; j < d.C; ++j) acc[j] = a[j] * reader.channel(j)(px[j]);
        } else {
          for (int64_t j = 0; j < d.C; ++j) acc[j] += a[j] * reader.channel(r * d.C + j)(px[r * d.C + j]);
        }
      }
      scalar_t* po = out + pix * d.C;
      for (int64_t j = 0; j < d.C; ++j) po[j] = static_cast<scalar_t>(acc[j]);
    }
  });
}

// grad_logits (cardinal-major) from ds[b, r, j] = sum_hw dout[b, j] * x[b, r*C + j] through the softmax
// (or sigmoid) Jacobian: da_r = s_r * (ds_r - sum_r' s_r' ds_r').
template <typename scalar_t, typename acc_t>
void logits_grad(const std::vector<acc_t>& att, const std::vector<acc_t>& ds, scalar_t* dlogits, const Dims& d) {
  const int64_t ck = d.C / d.K;
  at::parallel_for(0, d.B * d.C, 256, [&](int64_t begin, int64_t end) {
    for (int64_t bj = begin; bj < end; ++bj) {
      const int64_t b = bj / d.C, j = bj % d.C, k = j / ck, c = j % ck;
      acc_t dot = 0;
      for (int64_t r = 0; r < d.R; ++r) dot += att[(b * d.R + r) * d.C + j] * ds[(b * d.R + r) * d.C + j];
      for (int64_t r = 0; r < d.R; ++r) {
        const acc_t s = att[(b * d.R + r) * d.C + j];
        const acc_t g = ds[(b * d.R + r) * d.C + j];
        const acc_t da = d.R == 1 ? g * s * (acc_t(1) - s) : s * (g - dot);
        dlogits[b * d.R * d.C + k * d.R * ck + r * ck + c] = static_cast<scalar_t>(da);
      }
    }
  });
}

template <typename scalar_t, typename Reader>
void combine_backward_kernel(const scalar_t* dout, const scalar_t* x, const scalar_t* logits, scalar_t* dx,
                             scalar_t* dlogits, const Dims& d, bool channels_last, const Reader& reader) {
  using acc_t = at::opmath_type<scalar_t>;
  const std::vector<acc_t> att = attention_weights<scalar_t, acc_t>(logits, d);
  std::vector<acc_t> ds(d.B * d.R * d.C);
  if (!channels_last) {
    // One task per (b, j): the reduction for every r and the dx rows for every r share the dout row.
    at::parallel_for(0, d.B * d.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / d.C, j = row % d.C;
        const scalar_t* pg = dout + row * d.HW;
        for (int64_t r = 0; r < d.R; ++r) {
          const int64_t xrow = (b * d.R + r) * d.C + j;
          ds[xrow] = row_dot<scalar_t, acc_t>(pg, x + xrow * d.HW, d.HW, reader.channel(r * d.C + j));
          if (dx == nullptr) continue;
          const acc_t a = att[xrow];
          scalar_t* pdx = dx + xrow * d.HW;
          for (int64_t i = 0; i < d.HW; ++i) pdx[i] = static_cast<scalar_t>(a * static_cast<acc_t>(pg[i]));
        }
      }
    });
  } else {
    const int64_t nblk = (d.C + kChannelBlock - 1) / kChannelBlock;
    at::parallel_for(0, d.B * nblk, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(d.R * kChannelBlock);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / nblk, j0 = (task % nblk) * kChannelBlock;
        const int64_t nc = std::min(kChannelBlock, d.C - j0);
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t hw = 0; hw < d.HW; ++hw) {
          const scalar_t* pg = dout + (b * d.HW + hw) * d.C + j0;
          const scalar_t* px = x + (b * d.HW + hw) * d.R * d.C + j0;
          for (int64_t r = 0; r < d.R; ++r) {
            acc_t* pa = acc.data() + r * kChannelBlock;
            for (int64_t c = 0; c < nc; ++c) {
              pa[c] += static_cast<acc_t>(pg[c]) * reader.channel(r * d.C + j0 + c)(px[r * d.C + c]);
            }
            if (dx == nullptr) continue;
            const acc_t* a = att.data() + (b * d.R + r) * d.C + j0;
            scalar_t* pdx = dx + (b * d.HW + hw) * d.R * d.C + r * d.C + j0;
            for (int64_t c = 0; c < nc; ++c) pdx[c] = static_cast<scalar_t>(a[c] * static_cast<acc_t>(pg[c]));
          }
        }
        for (int64_t r = 0; r < d.R; ++r) {
          for (int64_t c = 0; c < nc; ++c) ds[(b * d.R + r) * d.C + j0 + c] = acc[r * kChannelBlock + c];
        }
      }
    });
  }
  logits_grad<scalar_t, acc_t>(att, ds, dlogits, d);
}

// dx[b, r*C + j] = att[b, r, j] * dout[b, j] + dgap[b, j] / HW
template <typename scalar_t>
void input_backward_kernel(const scalar_t* dout, const scalar_t* logits, const at::opmath_type<scalar_t>* dgap,
                           scalar_t* dx, const Dims& d, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const std::vector<acc_t> att = attention_weights<scalar_t, acc_t>(logits, d);
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(d.HW);
  if (!channels_last) {
    at::parallel_for(0, d.B * d.R * d.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t xrow = begin; xrow < end; ++xrow) {
        const int64_t b = xrow / (d.R * d.C), j = xrow % d.C;
        const acc_t a = att[xrow];
        const acc_t g = dgap[b * d.C + j] * inv_hw;
        const scalar_t* pg = dout + (b * d.C + j) * d.HW;
        scalar_t* pdx = dx + xrow * d.HW;
        for (int64_t i = 0; i < d.HW; ++i) pdx[i] = static_cast<scalar_t>(a * static_cast<acc_t>(pg[i]) + g);
      }
    });
    return;
  }
  at::parallel_for(0, d.B * d.HW, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pix = begin; pix < end; ++pix) {
      const int64_t b = pix / d.HW;
      const scalar_t* pg = dout + pix * d.C;
      const acc_t* pgap = dgap + b * d.C;
      for (int64_t r = 0; r < d.R; ++r) {
        const acc_t* a = att.data() + (b * d.R + r) * d.C;
        scalar_t* pdx = dx + (pix * d.R + r) * d.C;
        for (int64_t j = 0; j < d.C; ++j) {
          pdx[j] = static_cast<scalar_t>(a[j] * static_cast<acc_t>(pg[j]) + pgap[j] * inv_hw);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// The backward of the split-attention tail after its BatchNorm + ReLU, reading x (the BatchNorm's input) and
// grad_out only (split_attention_norm_backward_*). u = relu_affine(x), mask = the ReLU passed (u <= 0 is false,
// as the BatchNorm backward's mask), xc = x - mean. Per (b, channel c' = r*C + j of R*C), over H, W:
//   ds = sum dout_j * u   (-> the logits gradient)
//   sums[0] = sum mask * dout_j, sums[1] = sum mask * dout_j * xc, sums[2] = sum mask, sums[3] = sum mask * xc
// so that with grad_u = mask * (att_r * dout_j + grad_gap_j / HW), the BatchNorm's sums over b, H, W are
//   sum_dy = sum_b att * sums[0] + g * sums[2], sum_dy_xhat = invstd * sum_b att * sums[1] + g * sums[3].

constexpr int kLanes = 16;        // independent fp32 partial sums of the reductions (the loops vectorise over them)
constexpr int64_t kFlush = 4096;  // elements summed in acc_t before they are added to the fp64 totals

// The five terms of element x with output gradient g, for the per-channel constants scale, shift, mean.
template <typename scalar_t, typename acc_t>
inline void norm_terms(scalar_t x, acc_t g, acc_t scale, acc_t shift, acc_t mean, acc_t& t0, acc_t& t1, acc_t& t2,
                       acc_t& t3, acc_t& t4) {
  const acc_t u = relu_affine<scalar_t, acc_t>(x, scale, shift);
  const acc_t pass = u <= acc_t(0) ? acc_t(0) : acc_t(1);
  const acc_t xc = static_cast<acc_t>(x) - mean;
  const acc_t pg = pass * g;
  t0 = g * u;
  t1 = pg;
  t2 = pg * xc;
  t3 = pass;
  t4 = pass * xc;
}

// total[0..5) += the terms of a row of n elements of one channel, in kLanes acc_t lanes per chunk of kFlush.
template <typename scalar_t, typename acc_t>
void norm_row_sums(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dout, int64_t n, acc_t scale,
                   acc_t shift, acc_t mean, double* total) {
  for (int64_t start = 0; start < n; start += kFlush) {
    const int64_t stop = std::min(n, start + kFlush);
    acc_t l0[kLanes] = {}, l1[kLanes] = {}, l2[kLanes] = {}, l3[kLanes] = {}, l4[kLanes] = {};
    int64_t i = start;
    for (; i + kLanes <= stop; i += kLanes) {
      // Kept a loop over contiguous lanes (see run_lane_sums in the BatchNorm kernels): it vectorises.
#pragma GCC unroll 1
#pragma GCC ivdep
      for (int j = 0; j < kLanes; ++j) {
        acc_t t0, t1, t2, t3, t4;
        norm_terms<scalar_t, acc_t>(x[i + j], static_cast<acc_t>(dout[i + j]), scale, shift, mean, t0, t1, t2, t3,
                                    t4);
        l0[j] += t0;
        l1[j] += t1;
        l2[j] += t2;
        l3[j] += t3;
        l4[j] += t4;
      }
    }
    acc_t s[5] = {0, 0, 0, 0, 0};
    for (; i < stop; ++i) {
      acc_t t0, t1, t2, t3, t4;
      norm_terms<scalar_t, acc_t>(x[i], static_cast<acc_t>(dout[i]), scale, shift, mean, t0, t1, t2, t3, t4);
      s[0] += t0;
      s[1] += t1;
      s[2] += t2;
      s[3] += t3;
      s[4] += t4;
    }
    for (int j = 0; j < kLanes; ++j) {
      s[0] += l0[j];
      s[1] += l1[j];
      s[2] += l2[j];
      s[3] += l3[j];
      s[4] += l4[j];
    }
    for (int q = 0; q < 5; ++q) total[q] += s[q];
  }
}

template <typename scalar_t>
void norm_backward_reduce_kernel(const scalar_t* dout, const scalar_t* x, const scalar_t* logits,
                                 const NormRelu<scalar_t>& reader, const std::vector<at::opmath_type<scalar_t>>& mean,
                                 scalar_t* dlogits, at::opmath_type<scalar_t>* sums, const Dims& d,
                                 bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const std::vector<acc_t> att = attention_weights<scalar_t, acc_t>(logits, d);
  std::vector<acc_t> ds(d.B * d.R * d.C);
  const int64_t plane = d.B * d.R * d.C;  // sums is [4, B, R*C]
  auto store = [&](int64_t b, int64_t r, int64_t j, const double* acc) {
    ds[(b * d.R + r) * d.C + j] = static_cast<acc_t>(acc[0]);
    for (int q = 0; q < 4; ++q) sums[q * plane + (b * d.R + r) * d.C + j] = static_cast<acc_t>(acc[q + 1]);
  };
  if (!channels_last) {
    at::parallel_for(0, d.B * d.R * d.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t xrow = begin; xrow < end; ++xrow) {
        const int64_t b = xrow / (d.R * d.C), c = xrow % (d.R * d.C), r = c / d.C, j = c % d.C;
        double total[5] = {0, 0, 0, 0, 0};
        norm_row_sums<scalar_t, acc_t>(x + xrow * d.HW, dout + (b * d.C + j) * d.HW, d.HW, reader.scale[c],
                                       reader.shift[c], mean[c], total);
        store(b, r, j, total);
      }
    });
  } else {
    // Per task: a block of channels of one image; per position, the R splits' runs of those channels, one term
    // per channel (contiguous: the loop vectorises over the channels), acc_t sums flushed to fp64.
    const int64_t nblk = (d.C + kChannelBlock - 1) / kChannelBlock;
    const int64_t flush_every = std::max<int64_t>(1, kFlush / kChannelBlock);
    at::parallel_for(0, d.B * nblk, 1, [&](int64_t begin, int64_t end) {
      const int64_t width = d.R * kChannelBlock;
      std::vector<acc_t> acc(5 * width), scale(width), shift(width), mu(width);
      std::vector<double> total(5 * width);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / nblk, j0 = (task % nblk) * kChannelBlock;
        const int64_t nc = std::min(kChannelBlock, d.C - j0);
        for (int64_t r = 0; r < d.R; ++r) {
          for (int64_t c = 0; c < nc; ++c) {
            const int64_t ch = r * d.C + j0 + c;
            scale[r * kChannelBlock + c] = reader.scale[ch];
            shift[r * kChannelBlock + c] = reader.shift[ch];
            mu[r * kChannelBlock + c] = mean[ch];
          }
        }
        std::fill(total.begin(), total.end(), 0.0);
        for (int64_t start = 0; start < d.HW; start += flush_every) {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t hw = start; hw < std::min(d.HW, start + flush_every); ++hw) {
            const scalar_t* __restrict__ pg = dout + (b * d.HW + hw) * d.C + j0;
            for (int64_t r = 0; r < d.R; ++r) {
              const scalar_t* __restrict__ px = x + (b * d.HW + hw) * d.R * d.C + r * d.C + j0;
              const int64_t o = r * kChannelBlock;
              acc_t* __restrict__ a0 = acc.data() + o;
              acc_t* __restrict__ a1 = a0 + width;
              acc_t* __restrict__ a2 = a1 + width;
              acc_t* __restrict__ a3 = a2 + width;
              acc_t* __restrict__ a4 = a3 + width;
              const acc_t* __restrict__ sc = scale.data() + o;
              const acc_t* __restrict__ sh = shift.data() + o;
              const acc_t* __restrict__ mc = mu.data() + o;
#pragma GCC ivdep
              for (int64_t c = 0; c < nc; ++c) {
                acc_t t0, t1, t2, t3, t4;
                norm_terms<scalar_t, acc_t>(px[c], static_cast<acc_t>(pg[c]), sc[c], sh[c], mc[c], t0, t1, t2, t3,
                                            t4);
                a0[c] += t0;
                a1[c] += t1;
                a2[c] += t2;
                a3[c] += t3;
                a4[c] += t4;
              }
            }
          }
          for (size_t i = 0; i < acc.size(); ++i) total[i] += acc[i];
        }
        double one[5];
        for (int64_t r = 0; r < d.R; ++r) {
          for (int64_t c = 0; c < nc; ++c) {
            for (int q = 0; q < 5; ++q) one[q] = total[q * width + r * kChannelBlock + c];
            store(b, r, j0 + c, one);
          }
        }
      }
    });
  }
  logits_grad<scalar_t, acc_t>(att, ds, dlogits, d);
}

// Per-channel constants of the input gradient: grad_x = wi * (grad_u - (k1 + xc * k2)) with grad_u = mask *
// (att_r * dout_j + grad_gap_j / HW), wi = weight * invstd, k1 = sum_dy / count, k2 = sum_dy_xhat * invstd / count
// (the BatchNorm's input gradient). Arrays over the R*C channels.
template <typename acc_t>
struct NormInputTable {
  std::vector<acc_t> scale, shift, mean, wi, k1, k2;
};

template <typename scalar_t, typename acc_t>
inline acc_t norm_input_grad(scalar_t x, acc_t a, acc_t g, acc_t gap, acc_t scale, acc_t shift, acc_t mean,
                             acc_t wi, acc_t k1, acc_t k2) {
  const acc_t u = relu_affine<scalar_t, acc_t>(x, scale, shift);
  const acc_t du = u <= acc_t(0) ? acc_t(0) : a * g + gap;
  return wi * (du - (k1 + (static_cast<acc_t>(x) - mean) * k2));
}

template <typename scalar_t>
void norm_backward_input_kernel(const scalar_t* dout, const scalar_t* x, const scalar_t* logits,
                                const at::opmath_type<scalar_t>* dgap,
                                const NormInputTable<at::opmath_type<scalar_t>>& t, scalar_t* dx, const Dims& d,
                                bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const std::vector<acc_t> att = attention_weights<scalar_t, acc_t>(logits, d);
  const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(d.HW);
  std::vector<acc_t> gap(d.B * d.C);  // grad_gap / HW
  for (int64_t i = 0; i < d.B * d.C; ++i) gap[i] = dgap[i] * inv_hw;
  if (!channels_last) {
    at::parallel_for(0, d.B * d.R * d.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t xrow = begin; xrow < end; ++xrow) {
        const int64_t b = xrow / (d.R * d.C), c = xrow % (d.R * d.C), j = c % d.C;
        const acc_t a = att[xrow], g = gap[b * d.C + j];
        const acc_t sc = t.scale[c], sh = t.shift[c], m = t.mean[c], wi = t.wi[c], k1 = t.k1[c], k2 = t.k2[c];
        const scalar_t* __restrict__ pg = dout + (b * d.C + j) * d.HW;
        const scalar_t* __restrict__ px = x + xrow * d.HW;
        scalar_t* __restrict__ pdx = dx + xrow * d.HW;
        for (int64_t i = 0; i < d.HW; ++i) {
          pdx[i] = static_cast<scalar_t>(
              norm_input_grad<scalar_t, acc_t>(px[i], a, static_cast<acc_t>(pg[i]), g, sc, sh, m, wi, k1, k2));
        }
      }
    });
    return;
  }
  at::parallel_for(0, d.B * d.HW, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pix = begin; pix < end; ++pix) {
      const int64_t b = pix / d.HW;
      const scalar_t* __restrict__ pg = dout + pix * d.C;
      const acc_t* __restrict__ pgap = gap.data() + b * d.C;
      for (int64_t r = 0; r < d.R; ++r) {
        const int64_t o = r * d.C;
        const acc_t* __restrict__ a = att.data() + (b * d.R + r) * d.C;
        const acc_t* __restrict__ sc = t.scale.data() + o;
        const acc_t* __restrict__ sh = t.shift.data() + o;
        const acc_t* __restrict__ m = t.mean.data() + o;
        const acc_t* __restrict__ wi = t.wi.data() + o;
        const acc_t* __restrict__ k1 = t.k1.data() + o;
        const acc_t* __restrict__ k2 = t.k2.data() + o;
        const scalar_t* __restrict__ px = x + pix * d.R * d.C + o;
        scalar_t* __restrict__ pdx = dx + pix * d.R * d.C + o;
        for (int64_t j = 0; j < d.C; ++j) {
          pdx[j] = static_cast<scalar_t>(norm_input_grad<scalar_t, acc_t>(
              px[j], a[j], static_cast<acc_t>(pg[j]), pgap[j], sc[j], sh[j], m[j], wi[j], k1[j], k2[j]));
        }
      }
    }
  });
}

}  // namespace

at::Tensor split_attention_pool_cpu(const at::Tensor& x, int64_t radix) {
  check_split_attention_input(x, radix, "split_attention_pool");
  const at::MemoryFormat fmt = activation_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  const Dims d = dims_of(x, radix, 1);
  at::Tensor gap = at::empty({d.B, d.C}, x.options());
  if (gap.numel() == 0) return gap;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_pool_cpu", [&] {
    pool_kernel<scalar_t>(xc.const_data_ptr<scalar_t>(), gap.mutable_data_ptr<scalar_t>(), d,
                          fmt == at::MemoryFormat::ChannelsLast, Plain<scalar_t>());
  });
  return gap;
}

at::Tensor split_attention_combine_cpu(const at::Tensor& x, const at::Tensor& logits, int64_t radix,
                                       int64_t cardinality) {
  check_combine_logits(x, logits, radix, cardinality, "split_attention_combine");
  const at::MemoryFormat fmt = activation_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor lc = logits.contiguous();
  const Dims d = dims_of(x, radix, cardinality);
  at::Tensor out = at::empty({d.B, d.C, x.size(2), x.size(3)}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_combine_cpu", [&] {
    combine_kernel<scalar_t>(xc.const_data_ptr<scalar_t>(), lc.const_data_ptr<scalar_t>(),
                             out.mutable_data_ptr<scalar_t>(), d, fmt == at::MemoryFormat::ChannelsLast,
                             Plain<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> split_attention_combine_backward_cpu(const at::Tensor& grad_out,
                                                                        const at::Tensor& x,
                                                                        const at::Tensor& logits, int64_t radix,
                                                                        int64_t cardinality) {
  check_combine_logits(x, logits, radix, cardinality, "split_attention_combine_backward");
  check_grad_out(grad_out, x, radix, "split_attention_combine_backward");
  const Dims d = dims_of(x, radix, cardinality);
  const at::MemoryFormat fmt = activation_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor gc = grad_out.to(x.scalar_type()).contiguous(fmt);
  const at::Tensor lc = logits.contiguous();
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(fmt));
  at::Tensor dlogits = at::empty(logits.sizes(), logits.options());
  if (x.numel() == 0) return {dx, dlogits};  // B == 0 or C == 0: no kernel launch
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_combine_bwd_cpu", [&] {
    combine_backward_kernel<scalar_t>(gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                                      lc.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
                                      dlogits.mutable_data_ptr<scalar_t>(), d, fmt == at::MemoryFormat::ChannelsLast,
                                      Plain<scalar_t>());
  });
  return {dx, dlogits};
}

at::Tensor split_attention_logits_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                              const at::Tensor& logits, int64_t radix, int64_t cardinality) {
  check_combine_logits(x, logits, radix, cardinality, "split_attention_logits_backward");
  check_grad_out(grad_out, x, radix, "split_attention_logits_backward");
  const Dims d = dims_of(x, radix, cardinality);
  const at::MemoryFormat fmt = activation_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor gc = grad_out.to(x.scalar_type()).contiguous(fmt);
  const at::Tensor lc = logits.contiguous();
  at::Tensor dlogits = at::empty(logits.sizes(), logits.options());
  if (x.numel() == 0) return dlogits;  // B == 0 or C == 0: no kernel launch
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_logits_bwd_cpu", [&] {
    combine_backward_kernel<scalar_t>(gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                                      lc.const_data_ptr<scalar_t>(), nullptr, dlogits.mutable_data_ptr<scalar_t>(), d,
                                      fmt == at::MemoryFormat::ChannelsLast, Plain<scalar_t>());
  });
  return dlogits;
}

at::Tensor split_attention_input_backward_cpu(const at::Tensor& grad_out, const at::Tensor& logits,
                                              const at::Tensor& grad_gap, int64_t radix, int64_t cardinality) {
  check_input_backward_args(grad_out, logits, grad_gap, radix, cardinality);
  const at::MemoryFormat fmt = activation_format(grad_out);
  const at::Tensor gc = grad_out.contiguous(fmt);
  const Dims d{grad_out.size(0), radix, grad_out.size(1), cardinality, grad_out.size(2) * grad_out.size(3)};
  at::Tensor dx = at::empty({d.B, d.R * d.C, grad_out.size(2), grad_out.size(3)}, grad_out.options().memory_format(fmt));
  if (dx.numel() == 0) return dx;
  const at::Tensor lc = logits.contiguous();
  const at::Tensor dg = grad_gap.to(grad_out.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "split_attention_input_bwd_cpu",
                                  [&] {
                                    input_backward_kernel<scalar_t>(
                                        gc.const_data_ptr<scalar_t>(), lc.const_data_ptr<scalar_t>(),
                                        dg.const_data_ptr<at::opmath_type<scalar_t>>(), dx.mutable_data_ptr<scalar_t>(), d,
                                        fmt == at::MemoryFormat::ChannelsLast);
                                  });
  return dx;
}

at::Tensor split_attention_norm_pool_cpu(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                                         const std::optional<at::Tensor>& weight,
                                         const std::optional<at::Tensor>& bias, double eps, int64_t radix) {
  const char* op = "split_attention_norm_pool";
  check_split_attention_input(x, radix, op);
  check_norm_args(x, mean, var, weight, bias, eps, op);
  const at::MemoryFormat fmt = activation_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  const Dims d = dims_of(x, radix, 1);
  at::Tensor gap = at::empty({d.B, d.C}, x.options());
  if (gap.numel() == 0) return gap;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_norm_pool_cpu", [&] {
    pool_kernel<scalar_t>(xc.const_data_ptr<scalar_t>(), gap.mutable_data_ptr<scalar_t>(), d,
                          fmt == at::MemoryFormat::ChannelsLast,
                          norm_relu<scalar_t>(mean, var, weight, bias, eps, x.size(1)));
  });
  return gap;
}

at::Tensor split_attention_norm_combine_cpu(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                                            const std::optional<at::Tensor>& weight,
                                            const std::optional<at::Tensor>& bias, double eps,
                                            const at::Tensor& logits, int64_t radix, int64_t cardinality) {
  const char* op = "split_attention_norm_combine";
  check_combine_logits(x, logits, radix, cardinality, op);
  check_norm_args(x, mean, var, weight, bias, eps, op);
  const at::MemoryFormat fmt = activation_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor lc = logits.contiguous();
  const Dims d = dims_of(x, radix, cardinality);
  at::Tensor out = at::empty({d.B, d.C, x.size(2), x.size(3)}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_norm_combine_cpu", [&] {
    combine_kernel<scalar_t>(xc.const_data_ptr<scalar_t>(), lc.const_data_ptr<scalar_t>(),
                             out.mutable_data_ptr<scalar_t>(), d, fmt == at::MemoryFormat::ChannelsLast,
                             norm_relu<scalar_t>(mean, var, weight, bias, eps, x.size(1)));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> split_attention_norm_backward_reduce_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    const at::Tensor& logits, int64_t radix, int64_t cardinality) {
  const char* op = "split_attention_norm_backward_reduce";
  check_combine_logits(x, logits, radix, cardinality, op);
  check_grad_out(grad_out, x, radix, op);
  check_norm_args(x, mean, var, weight, bias, eps, op);
  const Dims d = dims_of(x, radix, cardinality);
  const at::MemoryFormat fmt = activation_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor gc = grad_out.to(x.scalar_type()).contiguous(fmt);
  const at::Tensor lc = logits.contiguous();
  at::Tensor dlogits = at::empty(logits.sizes(), logits.options());
  at::Tensor sums = at::zeros({4, d.B, d.R * d.C}, x.options().dtype(bn_stats_dtype(x)));
  if (x.numel() == 0) {
    dlogits.zero_();
    return {dlogits, sums};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_norm_bwd_reduce_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<double> m = to_vector(mean);
    norm_backward_reduce_kernel<scalar_t>(gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                                          lc.const_data_ptr<scalar_t>(),
                                          norm_relu<scalar_t>(mean, var, weight, bias, eps, x.size(1)),
                                          std::vector<acc_t>(m.begin(), m.end()), dlogits.mutable_data_ptr<scalar_t>(),
                                          sums.mutable_data_ptr<acc_t>(), d, fmt == at::MemoryFormat::ChannelsLast);
  });
  return {dlogits, sums};
}

std::tuple<at::Tensor, at::Tensor> split_attention_norm_backward_sums_cpu(const at::Tensor& sums,
                                                                          const at::Tensor& logits,
                                                                          const at::Tensor& grad_gap,
                                                                          const at::Tensor& var, double eps,
                                                                          int64_t radix, int64_t cardinality,
                                                                          int64_t hw) {
  check_norm_sums_args(sums, logits, grad_gap, var, eps, radix, cardinality, hw);
  const int64_t B = sums.size(1), RC = sums.size(2);
  const Dims d{B, radix, RC / radix, cardinality, hw};
  at::Tensor sum_dy = at::zeros({RC}, var.options()), sum_dy_xhat = at::zeros({RC}, var.options());
  if (RC == 0) return {sum_dy, sum_dy_xhat};
  const at::Tensor sc = sums.contiguous(), lc = logits.contiguous();
  const at::Tensor dg = grad_gap.to(var.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "split_attention_norm_bwd_sums_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<acc_t> att = attention_weights<scalar_t, acc_t>(lc.const_data_ptr<scalar_t>(), d);
    const acc_t* ps = sc.const_data_ptr<acc_t>();
    const acc_t* pg = dg.const_data_ptr<acc_t>();
    const std::vector<double> v = to_vector(var);
    const acc_t inv_hw = acc_t(1) / static_cast<acc_t>(hw);
    const int64_t plane = B * RC;
    acc_t* sdy = sum_dy.mutable_data_ptr<acc_t>();
    acc_t* sdx = sum_dy_xhat.mutable_data_ptr<acc_t>();
    for (int64_t c = 0; c < RC; ++c) {
      const int64_t j = c % d.C;
      acc_t s1 = 0, s2 = 0;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t i = b * RC + c;
        const acc_t a = att[i], g = pg[b * d.C + j] * inv_hw;
        s1 += a * ps[i] + g * ps[2 * plane + i];
        s2 += a * ps[plane + i] + g * ps[3 * plane + i];
      }
      sdy[c] = s1;
      sdx[c] = static_cast<acc_t>(s2 / std::sqrt(v[c] + eps));
    }
  });
  return {sum_dy, sum_dy_xhat};
}

at::Tensor split_attention_norm_backward_input_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    const at::Tensor& logits, const at::Tensor& grad_gap, const at::Tensor& sum_dy, const at::Tensor& sum_dy_xhat,
    const at::Tensor& count, int64_t radix, int64_t cardinality) {
  check_norm_backward_input_args(grad_out, x, mean, var, weight, bias, eps, logits, grad_gap, sum_dy, sum_dy_xhat,
                                 count, radix, cardinality);
  const Dims d = dims_of(x, radix, cardinality);
  const at::MemoryFormat fmt = activation_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor gc = grad_out.to(x.scalar_type()).contiguous(fmt);
  const at::Tensor lc = logits.contiguous();
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (x.numel() == 0) return dx;
  const at::Tensor dg = grad_gap.to(bn_stats_dtype(x)).contiguous();
  const int64_t RC = x.size(1);
  std::vector<double> scale, shift;
  affine_of(mean, var, weight, bias, eps, RC, scale, shift);
  const std::vector<double> m = to_vector(mean), v = to_vector(var), w = to_vector(weight, RC, 1.0);
  const std::vector<double> sdy = to_vector(sum_dy), sdx = to_vector(sum_dy_xhat);
  const double n = std::max(count.item<double>(), 1.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "split_attention_norm_bwd_input_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    NormInputTable<acc_t> table;
    for (auto* v_ : {&table.scale, &table.shift, &table.mean, &table.wi, &table.k1, &table.k2}) v_->resize(RC);
    for (int64_t c = 0; c < RC; ++c) {
      const double invstd = 1.0 / std::sqrt(v[c] + eps);
      table.scale[c] = static_cast<acc_t>(scale[c]);
      table.shift[c] = static_cast<acc_t>(shift[c]);
      table.mean[c] = static_cast<acc_t>(m[c]);
      table.wi[c] = static_cast<acc_t>(w[c] * invstd);
      table.k1[c] = static_cast<acc_t>(sdy[c] / n);
      table.k2[c] = static_cast<acc_t>(sdx[c] / n * invstd);
    }
    norm_backward_input_kernel<scalar_t>(gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                                         lc.const_data_ptr<scalar_t>(), dg.const_data_ptr<acc_t>(), table,
                                         dx.mutable_data_ptr<scalar_t>(), d, fmt == at::MemoryFormat::ChannelsLast);
  });
  return dx;
}

TORCH_LIBRARY_IMPL(resnest_cuda, CPU, m) {
  m.impl("split_attention_norm_backward_reduce", &split_attention_norm_backward_reduce_cpu);
  m.impl("split_attention_norm_backward_sums", &split_attention_norm_backward_sums_cpu);
  m.impl("split_attention_norm_backward_input", &split_attention_norm_backward_input_cpu);
  m.impl("split_attention_norm_pool", &split_attention_norm_pool_cpu);
  m.impl("split_attention_norm_combine", &split_attention_norm_combine_cpu);
  m.impl("split_attention_logits_backward", &split_attention_logits_backward_cpu);
  m.impl("split_attention_input_backward", &split_attention_input_backward_cpu);
  m.impl("split_attention_pool", &split_attention_pool_cpu);
  m.impl("split_attention_combine", &split_attention_combine_cpu);
  m.impl("split_attention_combine_backward", &split_attention_combine_backward_cpu);
}

}  // namespace resnest_cuda
