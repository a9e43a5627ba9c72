#pragma once
// The per-channel affine map of the fused BatchNorm's CPU kernels, shared with the kernels that apply it to their
// input on the fly (the split-attention ops after BatchNorm + ReLU): the one statement of how y is computed from
// x, so that every kernel that recomputes y gets the same values bit for bit.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cmath>
#include <optional>
#include <vector>

namespace resnest_cuda {

inline std::vector<double> to_vector(const std::optional<at::Tensor>& t, int64_t C, double fill) {
  std::vector<double> v(C, fill);
  if (!t.has_value()) return v;
  if (t->is_contiguous() && (t->scalar_type() == at::kFloat || t->scalar_type() == at::kDouble)) {
    AT_DISPATCH_FLOATING_TYPES(t->scalar_type(), "to_vector", [&] {
      const scalar_t* p = t->data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) v[c] = static_cast<double>(p[c]);
    });
    return v;
  }
  const at::Tensor d = t->to(at::kDouble).contiguous();
  std::copy(d.data_ptr<double>(), d.data_ptr<double>() + C, v.begin());
  return v;
}

inline std::vector<double> to_vector(const at::Tensor& t) {
  return to_vector(std::optional<at::Tensor>(t), t.size(0), 0);
}

// ReLU that keeps NaN, as torch.relu.
template <typename acc_t>
inline acc_t relu_of(acc_t t) {
  return (t > acc_t(0) || t != t) ? t : acc_t(0);
}

// The forward's per-channel affine map, y = act(x * scale_c + shift_c (+ residual)): scale_c = weight_c /
// sqrt(var_c + eps), shift_c = bias_c - mean_c * scale_c, in fp64, used in the computation's dtype. The backward
// recomputes the ReLU mask with the same numbers, so the mask equals the forward's exactly.
inline void affine_of(const at::Tensor& mean, const at::Tensor& var, const std::optional<at::Tensor>& weight,
                      const std::optional<at::Tensor>& bias, double eps, int64_t C, std::vector<double>& scale,
                      std::vector<double>& shift) {
  const std::vector<double> m = to_vector(mean), v = to_vector(var);
  const std::vector<double> w = to_vector(weight, C, 1.0), b = to_vector(bias, C, 0.0);
  scale.resize(C);
  shift.resize(C);
  for (int64_t c = 0; c < C; ++c) {
    scale[c] = w[c] / std::sqrt(v[c] + eps);
    shift[c] = b[c] - m[c] * scale[c];
  }
}

// y = relu(x * scale_c + shift_c) rounded to scalar_t, as batch_norm_act writes it (without residual), read back in
// acc_t: what a kernel that takes BatchNorm + ReLU as its input prologue sees. Rounded first, then one compare and
// select (NaN passes, -0 becomes 0): the same value as relu then rounding, and a loop that uses it vectorises.
template <typename scalar_t, typename acc_t>
inline acc_t relu_affine(scalar_t x, acc_t scale, acc_t shift) {
  const acc_t t = static_cast<acc_t>(static_cast<scalar_t>(static_cast<acc_t>(x) * scale + shift));
  return t <= acc_t(0) ? acc_t(0) : t;
}

}  // namespace resnest_cuda
