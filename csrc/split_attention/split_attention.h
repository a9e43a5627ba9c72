#pragma once
// Fused split attention (ResNeSt): shared declarations and input checks for the CPU and CUDA kernels.
//
// Layouts (R = radix, K = cardinality, C = channels per split):
//   x       [B, R*C, H, W]  radix-major: channel r*C + k*(C/K) + c
//   logits  [B, R*C] or [B, R*C, 1, 1], cardinal-major (fc2 order): index k*(R*C/K) + r*(C/K) + c
//   gap     [B, C]          mean over H, W of the sum over r
//   out     [B, C, H, W]    sum over r of softmax_r(logits) * x_r (sigmoid when R == 1)
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "../batch_norm/batch_norm_act.h"

namespace resnest_cuda {

// Argument checks: the one place where the split-attention arguments are validated. They run on every path: the
// Python wrappers and raw torch.ops calls reach the CPU/CUDA kernels, torch.compile and fake tensors the Meta
// kernels (split_attention.cpp), all of which call these. Shape and value errors raise ValueError, dtype errors
// TypeError (Python types); each names the argument and the expected shape. Sizes are read as SymInts so that the
// Meta kernels also check symbolic shapes.

// Validates x for every op and returns C (channels per split).
inline c10::SymInt check_split_attention_input(const at::Tensor& x, int64_t radix, const char* op) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be a 4-D tensor [B, radix*C, H, W], got shape ", x.sym_sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be float32/float16/bfloat16/float64, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(radix >= 1, op, ": radix must be an int >= 1, got ", radix);
  TORCH_CHECK_VALUE(x.sym_size(1) % radix == 0, op, ": x.shape[1] (", x.sym_size(1),
                    ") must be divisible by radix (", radix, "); expected x of shape [B, radix*C, H, W]");
  TORCH_CHECK_VALUE(x.sym_size(2) >= 1 && x.sym_size(3) >= 1, op, ": x must have H >= 1 and W >= 1, got shape ",
                    x.sym_sizes());
  return x.sym_size(1) / radix;
}

inline bool logits_shape_ok(const at::Tensor& logits, const c10::SymInt& batch, const c10::SymInt& rc) {
  const bool flat = logits.dim() == 2;
  const bool conv = logits.dim() == 4 && logits.sym_size(2) == 1 && logits.sym_size(3) == 1;
  return (flat || conv) && logits.sym_size(0) == batch && logits.sym_size(1) == rc;
}

inline void check_combine_logits(const at::Tensor& x, const at::Tensor& logits, int64_t radix, int64_t cardinality,
                                 const char* op) {
  const c10::SymInt C = check_split_attention_input(x, radix, op);
  TORCH_CHECK_VALUE(cardinality >= 1, op, ": cardinality must be an int >= 1, got ", cardinality);
  TORCH_CHECK_VALUE(C % cardinality == 0, op, ": channels per split (", C,
                    " = x.shape[1] / radix) must be divisible by cardinality (", cardinality, ")");
  const c10::SymInt B = x.sym_size(0), RC = x.sym_size(1);
  TORCH_CHECK_VALUE(logits_shape_ok(logits, B, RC), op, ": logits must have shape [", B, ", ", RC, "] or [", B, ", ",
                    RC, ", 1, 1] (batch, radix*C), got ", logits.sym_sizes());
  TORCH_CHECK_TYPE(logits.scalar_type() == x.scalar_type(), op, ": logits dtype (", logits.scalar_type(),
                   ") must match x dtype (", x.scalar_type(), ")");
  TORCH_CHECK_VALUE(logits.device() == x.device(), op, ": logits is on ", logits.device(), " but x is on ",
                    x.device(), "; both must be on one device");
}

// grad_out of the combine op must be [B, C, H, W] on x's device.
inline void check_grad_out(const at::Tensor& grad_out, const at::Tensor& x, int64_t radix, const char* op) {
  const c10::SymInt C = x.sym_size(1) / radix;
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.sym_size(0) == x.sym_size(0) && grad_out.sym_size(1) == C &&
                        grad_out.sym_size(2) == x.sym_size(2) && grad_out.sym_size(3) == x.sym_size(3),
                    op, ": grad_out must have shape [", x.sym_size(0), ", ", C, ", ", x.sym_size(2), ", ",
                    x.sym_size(3), "], got ", grad_out.sym_sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad_out.scalar_type()), op,
                   ": grad_out must be float32/float16/bfloat16/float64, got ", grad_out.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == x.device(), op, ": grad_out is on ", grad_out.device(), " but x is on ",
                    x.device(), "; both must be on one device");
}

// Arguments of split_attention_input_backward: grad_out [B, C, H, W], logits [B, R*C(, 1, 1)], grad_gap [B, C].
inline void check_input_backward_args(const at::Tensor& grad_out, const at::Tensor& logits,
                                      const at::Tensor& grad_gap, int64_t radix, int64_t cardinality) {
  const char* op = "split_attention_input_backward";
  TORCH_CHECK_VALUE(grad_out.dim() == 4, op, ": grad_out must be a 4-D tensor [B, C, H, W], got shape ",
                    grad_out.sym_sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad_out.scalar_type()), op,
                   ": grad_out must be float32/float16/bfloat16/float64, got ", grad_out.scalar_type());
  TORCH_CHECK_VALUE(radix >= 1, op, ": radix must be an int >= 1, got ", radix);
  TORCH_CHECK_VALUE(cardinality >= 1, op, ": cardinality must be an int >= 1, got ", cardinality);
  const c10::SymInt B = grad_out.sym_size(0), C = grad_out.sym_size(1);
  TORCH_CHECK_VALUE(grad_out.sym_size(2) >= 1 && grad_out.sym_size(3) >= 1, op,
                    ": grad_out must have H >= 1 and W >= 1, got shape ", grad_out.sym_sizes());
  TORCH_CHECK_VALUE(C % cardinality == 0, op, ": C (", C, ") must be divisible by cardinality (", cardinality, ")");
  TORCH_CHECK_VALUE(logits_shape_ok(logits, B, C * radix), op, ": logits must have shape [", B, ", ", C * radix,
                    "] or [", B, ", ", C * radix, ", 1, 1], got ", logits.sym_sizes());
  TORCH_CHECK_VALUE(grad_gap.dim() == 2 && grad_gap.sym_size(0) == B && grad_gap.sym_size(1) == C, op,
                    ": grad_gap must have shape [", B, ", ", C, "], got ", grad_gap.sym_sizes());
  TORCH_CHECK_TYPE(logits.scalar_type() == grad_out.scalar_type(), op, ": logits dtype (", logits.scalar_type(),
                   ") must match grad_out dtype (", grad_out.scalar_type(), ")");
  TORCH_CHECK_TYPE(at::isFloatingType(grad_gap.scalar_type()), op,
                   ": grad_gap must be float32/float16/bfloat16/float64, got ", grad_gap.scalar_type());
  TORCH_CHECK_VALUE(logits.device() == grad_out.device() && grad_gap.device() == grad_out.device(), op,
                    ": grad_out, logits and grad_gap must be on one device");
}

// The BatchNorm arguments of the split_attention_norm_* ops, whose x is the input of a BatchNorm + ReLU (mean and
// var: [R*C] statistics in fp32, fp64 for fp64 x; weight and bias optional, that dtype or x's; eps >= 0), checked
// by the BatchNorm ops' own rules under the op's name.
inline void check_norm_args(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                            const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                            double eps, const char* op) {
  check_channel_vector(mean, x, op, "mean", false);
  check_channel_vector(var, x, op, "var", false);
  if (weight.has_value()) check_channel_vector(*weight, x, op, "weight", true);
  if (bias.has_value()) check_channel_vector(*bias, x, op, "bias", true);
  check_eps(eps, op);
}

// Arguments of split_attention_norm_backward_sums: sums [4, B, R*C] and var [R*C] in the statistics dtype of the
// logits (fp32, fp64 for fp64), logits [B, R*C(, 1, 1)], grad_gap [B, C], eps >= 0, hw (H*W of x) >= 1.
inline void check_norm_sums_args(const at::Tensor& sums, const at::Tensor& logits, const at::Tensor& grad_gap,
                                 const at::Tensor& var, double eps, int64_t radix, int64_t cardinality,
                                 int64_t hw) {
  const char* op = "split_attention_norm_backward_sums";
  TORCH_CHECK_VALUE(radix >= 1, op, ": radix must be an int >= 1, got ", radix);
  TORCH_CHECK_VALUE(cardinality >= 1, op, ": cardinality must be an int >= 1, got ", cardinality);
  TORCH_CHECK_VALUE(hw >= 1, op, ": hw (H*W of x) must be >= 1, got ", hw);
  check_eps(eps, op);
  TORCH_CHECK_TYPE(at::isFloatingType(logits.scalar_type()), op,
                   ": logits must be float32/float16/bfloat16/float64, got ", logits.scalar_type());
  const at::ScalarType stats = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_VALUE(sums.dim() == 3 && sums.sym_size(0) == 4, op, ": sums must have shape [4, B, R*C], got ",
                    sums.sym_sizes());
  const c10::SymInt B = sums.sym_size(1), RC = sums.sym_size(2);
  TORCH_CHECK_VALUE(RC % radix == 0 && (RC / radix) % cardinality == 0, op, ": sums.shape[2] (", RC,
                    ") must be radix * C with C divisible by cardinality (radix ", radix, ", cardinality ",
                    cardinality, ")");
  TORCH_CHECK_VALUE(logits_shape_ok(logits, B, RC), op, ": logits must have shape [", B, ", ", RC, "] or [", B,
                    ", ", RC, ", 1, 1], got ", logits.sym_sizes());
  TORCH_CHECK_VALUE(grad_gap.dim() == 2 && grad_gap.sym_size(0) == B && grad_gap.sym_size(1) == RC / radix, op,
                    ": grad_gap must have shape [", B, ", ", RC / radix, "], got ", grad_gap.sym_sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad_gap.scalar_type()), op,
                   ": grad_gap must be float32/float16/bfloat16/float64, got ", grad_gap.scalar_type());
  TORCH_CHECK_VALUE(var.dim() == 1 && var.sym_size(0) == RC, op, ": var must have shape [", RC, "], got ",
                    var.sym_sizes());
  TORCH_CHECK_TYPE(sums.scalar_type() == stats && var.scalar_type() == stats, op, ": sums and var must be ", stats,
                   " (the statistics dtype of the logits), got ", sums.scalar_type(), " and ", var.scalar_type());
  TORCH_CHECK_VALUE(logits.device() == sums.device() && grad_gap.device() == sums.device() &&
                        var.device() == sums.device(),
                    op, ": sums, logits, grad_gap and var must be on one device");
}

// Arguments of split_attention_norm_backward_input: those of the combine (x, logits, grad_out), the BatchNorm's
// (mean, var, weight, bias, eps), grad_gap [B, C], sum_dy and sum_dy_xhat [R*C] and count (0-d) in the statistics
// dtype.
inline void check_norm_backward_input_args(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean,
                                           const at::Tensor& var, const std::optional<at::Tensor>& weight,
                                           const std::optional<at::Tensor>& bias, double eps,
                                           const at::Tensor& logits, const at::Tensor& grad_gap,
                                           const at::Tensor& sum_dy, const at::Tensor& sum_dy_xhat,
                                           const at::Tensor& count, int64_t radix, int64_t cardinality) {
  const char* op = "split_attention_norm_backward_input";
  check_combine_logits(x, logits, radix, cardinality, op);
  check_grad_out(grad_out, x, radix, op);
  check_norm_args(x, mean, var, weight, bias, eps, op);
  const c10::SymInt C = x.sym_size(1) / radix;
  TORCH_CHECK_VALUE(grad_gap.dim() == 2 && grad_gap.sym_size(0) == x.sym_size(0) && grad_gap.sym_size(1) == C, op,
                    ": grad_gap must have shape [", x.sym_size(0), ", ", C, "], got ", grad_gap.sym_sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad_gap.scalar_type()), op,
                   ": grad_gap must be float32/float16/bfloat16/float64, got ", grad_gap.scalar_type());
  TORCH_CHECK_VALUE(grad_gap.device() == x.device(), op, ": grad_gap is on ", grad_gap.device(), " but x is on ",
                    x.device());
  check_channel_vector(sum_dy, x, op, "sum_dy", false);
  check_channel_vector(sum_dy_xhat, x, op, "sum_dy_xhat", false);
  check_count(count, x, op);
}

// Memory format used for a 4-D activation and its outputs: channels_last when x is channels_last-contiguous
// (and not also NCHW-contiguous, as happens for 1x1 maps), NCHW otherwise; other strided inputs are copied to
// NCHW first. The one statement of this rule: the CPU, CUDA and Meta kernels (fake tensors) all call it, and the
// Python autograd formulas ask a Meta kernel for it (resnest_cuda/ops.py, memory_format_of).
inline at::MemoryFormat activation_format(const at::Tensor& x) {
  if (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

at::Tensor split_attention_pool_cpu(const at::Tensor& x, int64_t radix);
at::Tensor split_attention_combine_cpu(const at::Tensor& x, const at::Tensor& logits, int64_t radix,
                                       int64_t cardinality);
at::Tensor split_attention_logits_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                              const at::Tensor& logits, int64_t radix, int64_t cardinality);
at::Tensor split_attention_input_backward_cpu(const at::Tensor& grad_out, const at::Tensor& logits,
                                              const at::Tensor& grad_gap, int64_t radix, int64_t cardinality);
std::tuple<at::Tensor, at::Tensor> split_attention_combine_backward_cpu(const at::Tensor& grad_out,
                                                                        const at::Tensor& x,
                                                                        const at::Tensor& logits, int64_t radix,
                                                                        int64_t cardinality);

// x read as u = relu(batch_norm(x)) (the split_attention_norm_* ops; formulas in split_attention.cpp).
at::Tensor split_attention_norm_pool_cpu(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                                         const std::optional<at::Tensor>& weight,
                                         const std::optional<at::Tensor>& bias, double eps, int64_t radix);
at::Tensor split_attention_norm_combine_cpu(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                                            const std::optional<at::Tensor>& weight,
                                            const std::optional<at::Tensor>& bias, double eps,
                                            const at::Tensor& logits, int64_t radix, int64_t cardinality);
std::tuple<at::Tensor, at::Tensor> split_attention_norm_backward_reduce_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    const at::Tensor& logits, int64_t radix, int64_t cardinality);
std::tuple<at::Tensor, at::Tensor> split_attention_norm_backward_sums_cpu(const at::Tensor& sums,
                                                                          const at::Tensor& logits,
                                                                          const at::Tensor& grad_gap,
                                                                          const at::Tensor& var, double eps,
                                                                          int64_t radix, int64_t cardinality,
                                                                          int64_t hw);
at::Tensor split_attention_norm_backward_input_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    const at::Tensor& logits, const at::Tensor& grad_gap, const at::Tensor& sum_dy, const at::Tensor& sum_dy_xhat,
    const at::Tensor& count, int64_t radix, int64_t cardinality);

}  // namespace resnest_cuda
