#pragma once
// The per-channel affine map of the fused BatchNorm's CUDA kernels, shared with the kernels that apply it to their
// input on the fly (the split-attention ops after BatchNorm + ReLU): the one statement of how y is computed from
// x, so that every kernel that recomputes y gets the same values bit for bit.
#include <cmath>
#include <cstdint>

#include "../../cuda_support.cuh"

namespace resnest_cuda {

// a * b + c rounded once (an FMA): the forward output and the backward's recomputed ReLU mask are computed with
// exactly the same operations whatever the compiler would contract.
__device__ __forceinline__ float fused_madd(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fused_madd(double a, double b, double c) { return fma(a, b, c); }

// The forward's per-channel affine map, y = act(x * scale_c + shift_c (+ residual)): scale_c = w_c * rsqrt(var_c +
// eps), shift_c = b_c - mean_c * scale_c (weight, bias: nullptr for 1, 0).
template <typename acc_t>
struct AffineMap {
  const acc_t* mean;
  const acc_t* var;
  const acc_t* weight;
  const acc_t* bias;
  double eps;
  __device__ __forceinline__ acc_t invstd(int64_t c) const {
    return acc_t(1) / ::sqrt(var[c] + static_cast<acc_t>(eps));
  }
  // scale and shift from the channel's invstd (computed once by a caller that also needs it).
  __device__ __forceinline__ void at(int64_t c, acc_t inv, acc_t& scale, acc_t& shift) const {
    scale = (weight != nullptr ? weight[c] : acc_t(1)) * inv;
    shift = fused_madd(-mean[c], scale, bias != nullptr ? bias[c] : acc_t(0));
  }
  __device__ __forceinline__ void at(int64_t c, acc_t& scale, acc_t& shift) const { at(c, invstd(c), scale, shift); }
};

// Whether the forward's ReLU blocked element x of a channel with this affine map: y <= 0 for
// y = relu(x * scale + shift) in scalar_t (the cast keeps the sign; NaN passes, as torch's ReLU backward).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ bool relu_blocked(acc_t x, acc_t scale, acc_t shift) {
  return static_cast<acc_t>(static_cast<scalar_t>(fused_madd(x, scale, shift))) <= acc_t(0);
}

// y = relu(x * scale + shift) rounded to scalar_t, as batch_norm_act writes it (without residual; ReLU keeps NaN),
// read back in acc_t: what a kernel that takes BatchNorm + ReLU as its input prologue sees.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t relu_affine(scalar_t x, acc_t scale, acc_t shift) {
  acc_t t = fused_madd(static_cast<acc_t>(x), scale, shift);
  if (!(t > acc_t(0)) && t == t) t = 0;
  return static_cast<acc_t>(static_cast<scalar_t>(t));
}

}  // namespace resnest_cuda
