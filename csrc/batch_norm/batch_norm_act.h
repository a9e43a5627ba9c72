#pragma once
// Fused training-mode BatchNorm (+ residual add) (+ ReLU): shared declarations and argument checks of the CPU, CUDA
// and Meta kernels.
//
// x is [N, C, *] (N rows, C channels, L = the product of the other sizes; usually [N, C, H, W]), NCHW or
// channels_last. An optional row mask `rows` (bool [N]) restricts the statistics to the rows where it is True; every
// row is normalised with them (the padding slots of fixed-size RoI batches).
//
//   batch_norm_stats          mean [C], biased var [C], count [] over the selected rows (one pass over x)
//   batch_norm_act            y = act(((x - mean) * rsqrt(var + eps)) * weight + bias (+ residual)), act = ReLU or
//                             identity (one pass)
//   batch_norm_act_backward_reduce
//                             g = grad_y * (y > 0) (grad_y itself without ReLU): sum_dy = sum g, sum_dy_xhat =
//                             sum g * xhat, over every row (one pass). With the forward output y (a residual was
//                             added before the ReLU) it also writes g, the residual's gradient; without it the ReLU
//                             mask is recomputed from x, the statistics, weight and bias, so y is not read. With y,
//                             grad_y may come in up to three parts (the gradients of aliases of y that several
//                             consumers received), summed in the reduction
//   batch_norm_act_backward_input
//                             grad_x = weight * invstd * (g - [row selected] (sum_dy + xhat * sum_dy_xhat) / count)
//                             (one pass), g as above with the mask recomputed from x, or grad_out itself
//
// Statistics and the per-channel tensors are fp32 (fp64 for fp64 x); x, y, residual and the gradients of x and
// residual keep x's dtype (fp32, fp16, bf16 or fp64). Between the reduction and the elementwise pass a
// SyncBatchNorm sums the statistics over its process group (resnest_cuda/batch_norm.py).
#include <ATen/ATen.h>

#include <tuple>

namespace resnest_cuda {

// Memory format of x and of everything the ops write: channels_last when a 4-D x is channels_last-contiguous and
// not also NCHW-contiguous, NCHW otherwise; other strided tensors are read through a copy in that format.
inline at::MemoryFormat bn_format(const at::Tensor& x) {
  if (x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

inline at::ScalarType bn_stats_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Argument checks: the one place where the arguments of these ops are validated (CPU, CUDA and Meta kernels call
// them). Shape and value errors raise ValueError, dtype errors TypeError; each names the argument.
inline void check_bn_input(const at::Tensor& x, const char* op, const char* name = "x") {
  TORCH_CHECK_VALUE(x.dim() >= 2, op, ": ", name, " must have at least 2 dimensions [N, C, ...], got shape ",
                    x.sym_sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf ||
                       x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kDouble,
                   op, ": ", name, " must be float32/float16/bfloat16/float64, got ", x.scalar_type());
}

inline void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.sym_sizes() == x.sym_sizes(), op, ": ", name, " must have the shape of x ", x.sym_sizes(),
                    ", got ", t.sym_sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", name, " dtype (", t.scalar_type(),
                   ") must match x dtype (", x.scalar_type(), ")");
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

// A per-channel tensor: [C], fp32 (fp64 for fp64 x) for statistics; weight and bias may also have x's dtype.
inline void check_channel_vector(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name,
                                 bool allow_x_dtype) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.sym_size(0) == x.sym_size(1), op, ": ", name, " must have shape [",
                    x.sym_size(1), "] (one value per channel of x), got ", t.sym_sizes());
  const bool ok = t.scalar_type() == bn_stats_dtype(x) || (allow_x_dtype && t.scalar_type() == x.scalar_type());
  TORCH_CHECK_TYPE(ok, op, ": ", name, " must be ", bn_stats_dtype(x),
                   allow_x_dtype ? " or x's dtype" : " (the statistics dtype of x)", ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

inline void check_rows(const std::optional<at::Tensor>& rows, const at::Tensor& x, const char* op) {
  if (!rows.has_value()) return;
  TORCH_CHECK_VALUE(rows->dim() == 1 && rows->sym_size(0) == x.sym_size(0), op, ": rows must have shape [",
                    x.sym_size(0), "] (one flag per row of x), got ", rows->sym_sizes());
  TORCH_CHECK_TYPE(rows->scalar_type() == at::kBool, op, ": rows must be a bool tensor, got ", rows->scalar_type());
  TORCH_CHECK_VALUE(rows->device() == x.device(), op, ": rows is on ", rows->device(), " but x is on ", x.device());
}

inline void check_count(const at::Tensor& count, const at::Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(count.dim() == 0, op, ": count must be a 0-d tensor, got shape ", count.sym_sizes());
  TORCH_CHECK_TYPE(count.scalar_type() == bn_stats_dtype(x), op, ": count must be ", bn_stats_dtype(x), ", got ",
                   count.scalar_type());
  TORCH_CHECK_VALUE(count.device() == x.device(), op, ": count is on ", count.device(), " but x is on ",
                    x.device());
}

inline void check_eps(double eps, const char* op) {
  TORCH_CHECK_VALUE(eps >= 0, op, ": eps must be >= 0, got ", eps);
}

inline void check_stats_args(const at::Tensor& x, const std::optional<at::Tensor>& rows,
                             const std::optional<at::Tensor>& running_mean,
                             const std::optional<at::Tensor>& running_var,
                             const std::optional<at::Tensor>& num_batches_tracked, double momentum) {
  const char* op = "batch_norm_stats";
  TORCH_CHECK_VALUE(momentum >= 0 || !running_mean.has_value() || num_batches_tracked.has_value(), op,
                    ": momentum < 0 (the cumulative average) needs num_batches_tracked");
  check_bn_input(x, op);
  check_rows(rows, x, op);
  TORCH_CHECK_VALUE(running_mean.has_value() == running_var.has_value(), op,
                    ": running_mean and running_var must be given together");
  for (const auto* t : {&running_mean, &running_var}) {
    if (!t->has_value()) continue;
    const char* name = t == &running_mean ? "running_mean" : "running_var";
    TORCH_CHECK_VALUE((*t)->dim() == 1 && (*t)->sym_size(0) == x.sym_size(1), op, ": ", name, " must have shape [",
                      x.sym_size(1), "], got ", (*t)->sym_sizes());
    TORCH_CHECK_TYPE(at::isFloatingType((*t)->scalar_type()), op, ": ", name, " must be a floating tensor, got ",
                     (*t)->scalar_type());
    TORCH_CHECK_VALUE((*t)->device() == x.device(), op, ": ", name, " is on ", (*t)->device(), " but x is on ",
                      x.device());
  }
  if (num_batches_tracked.has_value()) {
    TORCH_CHECK_VALUE(running_mean.has_value(), op, ": num_batches_tracked needs running_mean and running_var");
    TORCH_CHECK_VALUE(num_batches_tracked->dim() == 0, op, ": num_batches_tracked must be a 0-d tensor, got shape ",
                      num_batches_tracked->sym_sizes());
    TORCH_CHECK_TYPE(num_batches_tracked->scalar_type() == at::kLong, op,
                     ": num_batches_tracked must be an int64 tensor, got ", num_batches_tracked->scalar_type());
    TORCH_CHECK_VALUE(num_batches_tracked->device() == x.device(), op, ": num_batches_tracked is on ",
                      num_batches_tracked->device(), " but x is on ", x.device());
  }
}

// The running-statistics update of a training-mode BatchNorm, in ATen ops on any device (no host synchronisation):
// num_batches_tracked += 1; f = momentum (momentum < 0: 1 / num_batches_tracked, the cumulative average), and 0 when
// count <= 1; running_mean += f * (mean - running_mean); running_var += f * (var * count / (count - 1) - running_var).
inline void update_running_stats(const at::Tensor& mean, const at::Tensor& var, const at::Tensor& count,
                                 const std::optional<at::Tensor>& running_mean,
                                 const std::optional<at::Tensor>& running_var,
                                 const std::optional<at::Tensor>& num_batches_tracked, double momentum) {
  if (!running_mean.has_value()) return;
  at::Tensor factor;
  if (num_batches_tracked.has_value()) num_batches_tracked->add_(1);
  if (momentum >= 0) {
    factor = at::full({}, momentum, count.options());
  } else {
    factor = at::reciprocal(num_batches_tracked->to(count.scalar_type()));
  }
  factor = factor * at::gt(count, 1).to(count.scalar_type());
  const at::Tensor unbiased = var * (count / at::clamp_min(count - 1, 1));
  running_mean->copy_(at::lerp(running_mean->to(mean.scalar_type()), mean, factor));
  running_var->copy_(at::lerp(running_var->to(var.scalar_type()), unbiased, factor));
}

inline void check_act_args(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                           const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& residual, double eps) {
  const char* op = "batch_norm_act";
  check_bn_input(x, op);
  check_channel_vector(mean, x, op, "mean", false);
  check_channel_vector(var, x, op, "var", false);
  if (weight.has_value()) check_channel_vector(*weight, x, op, "weight", true);
  if (bias.has_value()) check_channel_vector(*bias, x, op, "bias", true);
  if (residual.has_value()) check_like_x(*residual, x, op, "residual");
  check_eps(eps, op);
}

inline void check_backward_args(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                                const at::Tensor& mean, const at::Tensor& var, const std::optional<at::Tensor>& weight,
                                const std::optional<at::Tensor>& bias, double eps) {
  check_bn_input(x, op);
  check_like_x(grad_out, x, op, "grad_out");
  check_channel_vector(mean, x, op, "mean", false);
  check_channel_vector(var, x, op, "var", false);
  if (weight.has_value()) check_channel_vector(*weight, x, op, "weight", true);
  if (bias.has_value()) check_channel_vector(*bias, x, op, "bias", true);
  check_eps(eps, op);
}

inline void check_backward_reduce_args(const at::Tensor& grad_out, const at::Tensor& x,
                                       const std::optional<at::Tensor>& y, const at::Tensor& mean,
                                       const at::Tensor& var, const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& bias, double eps, bool relu,
                                       const std::optional<at::Tensor>& grad_out2,
                                       const std::optional<at::Tensor>& grad_out3) {
  const char* op = "batch_norm_act_backward_reduce";
  check_backward_args(op, grad_out, x, mean, var, weight, bias, eps);
  if (y.has_value()) {
    TORCH_CHECK_VALUE(relu, op, ": y (the forward output) is only read with relu=True");
    check_like_x(*y, x, op, "y");
  }
  TORCH_CHECK_VALUE(!grad_out3.has_value() || grad_out2.has_value(), op, ": grad_out3 needs grad_out2");
  TORCH_CHECK_VALUE(!grad_out2.has_value() || y.has_value(), op,
                    ": grad_out2 and grad_out3 (further parts of grad_out) need y: the form that writes g");
  if (grad_out2.has_value()) check_like_x(*grad_out2, x, op, "grad_out2");
  if (grad_out3.has_value()) check_like_x(*grad_out3, x, op, "grad_out3");
}

inline void check_backward_input_args(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean,
                                      const at::Tensor& var, const std::optional<at::Tensor>& weight,
                                      const std::optional<at::Tensor>& bias, const at::Tensor& sum_dy,
                                      const at::Tensor& sum_dy_xhat, const at::Tensor& count,
                                      const std::optional<at::Tensor>& rows, double eps) {
  const char* op = "batch_norm_act_backward_input";
  check_backward_args(op, grad_out, x, mean, var, weight, bias, eps);
  check_channel_vector(sum_dy, x, op, "sum_dy", false);
  check_channel_vector(sum_dy_xhat, x, op, "sum_dy_xhat", false);
  check_count(count, x, op);
  check_rows(rows, x, op);
}

// Sizes of x seen as [N, C, L].
struct BnDims {
  int64_t N, C, L;
};

inline BnDims bn_dims(const at::Tensor& x) {
  int64_t L = 1;
  for (int64_t d = 2; d < x.dim(); ++d) L *= x.size(d);
  return {x.size(0), x.size(1), L};
}

// Output shells (every kernel and the Meta kernels): x's sizes in bn_format(x).
inline at::Tensor empty_like_x(const at::Tensor& x) {
  return at::empty_symint(x.sym_sizes(), x.options().memory_format(bn_format(x)));
}

}  // namespace resnest_cuda
