// Schemas of the split-attention ops and their Meta kernels. Autograd is registered in Python (resnest_cuda/ops.py);
// the CPU and CUDA kernels register themselves in cpu/ and cuda/.
//
// The Meta kernels are what fake tensors (torch.compile, torch.export, opcheck) run: they apply the argument checks
// and the memory-format rule of the CPU and CUDA kernels (split_attention.h), so every path raises the same errors
// and produces the same layouts.
#include <torch/library.h>

#include "split_attention.h"

namespace resnest_cuda {

// d(gap)/dx is the same constant 1/(H*W) for every element of a split: the gradient is returned as a broadcast
// view (strides [R*C, 1, 0, 0]) of a [B, R*C] tensor instead of being written out. Autograd adds it in place to
// the combine op's dx, so the full-size gradient is materialised once (device-agnostic, a few tiny kernels).
at::Tensor split_attention_pool_backward(const at::Tensor& grad_gap, int64_t radix, c10::SymInt height,
                                         c10::SymInt width) {
  const char* op = "split_attention_pool_backward";
  TORCH_CHECK_VALUE(grad_gap.dim() == 2, op, ": grad_gap must be a 2-D tensor [B, C], got shape ",
                    grad_gap.sym_sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad_gap.scalar_type()), op,
                   ": grad_gap must be float32/float16/bfloat16/float64, got ", grad_gap.scalar_type());
  TORCH_CHECK_VALUE(radix >= 1, op, ": radix must be an int >= 1, got ", radix);
  TORCH_CHECK_VALUE(height >= 1 && width >= 1, op, ": height and width must be >= 1, got ", height, ", ", width);
  const c10::SymInt batch = grad_gap.sym_size(0), rc = grad_gap.sym_size(1) * radix;
  const at::Tensor per_channel = (grad_gap / c10::Scalar(height * width)).repeat({1, radix});
  return per_channel.view_symint({batch, rc, 1, 1}).expand_symint({batch, rc, height, width});
}

namespace {

at::Tensor pool_meta(const at::Tensor& x, int64_t radix) {
  const c10::SymInt C = check_split_attention_input(x, radix, "split_attention_pool");
  return at::empty_symint({x.sym_size(0), C}, x.options());
}

at::Tensor combine_meta(const at::Tensor& x, const at::Tensor& logits, int64_t radix, int64_t cardinality) {
  check_combine_logits(x, logits, radix, cardinality, "split_attention_combine");
  const c10::SymInt C = x.sym_size(1) / radix;
  return at::empty_symint({x.sym_size(0), C, x.sym_size(2), x.sym_size(3)},
                          x.options().memory_format(activation_format(x)));
}

std::tuple<at::Tensor, at::Tensor> combine_backward_meta(const at::Tensor& grad_out, const at::Tensor& x,
                                                         const at::Tensor& logits, int64_t radix,
                                                         int64_t cardinality) {
  const char* op = "split_attention_combine_backward";
  check_combine_logits(x, logits, radix, cardinality, op);
  check_grad_out(grad_out, x, radix, op);
  return {at::empty_symint(x.sym_sizes(), x.options().memory_format(activation_format(x))),
          at::empty_symint(logits.sym_sizes(), logits.options())};
}

at::Tensor logits_backward_meta(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& logits,
                                int64_t radix, int64_t cardinality) {
  const char* op = "split_attention_logits_backward";
  check_combine_logits(x, logits, radix, cardinality, op);
  check_grad_out(grad_out, x, radix, op);
  return at::empty_symint(logits.sym_sizes(), logits.options());
}

at::Tensor input_backward_meta(const at::Tensor& grad_out, const at::Tensor& logits, const at::Tensor& grad_gap,
                               int64_t radix, int64_t cardinality) {
  check_input_backward_args(grad_out, logits, grad_gap, radix, cardinality);
  return at::empty_symint({grad_out.sym_size(0), grad_out.sym_size(1) * radix, grad_out.sym_size(2),
                           grad_out.sym_size(3)},
                          grad_out.options().memory_format(activation_format(grad_out)));
}

at::Tensor norm_pool_meta(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                          const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
                          int64_t radix) {
  const char* op = "split_attention_norm_pool";
  const c10::SymInt C = check_split_attention_input(x, radix, op);
  check_norm_args(x, mean, var, weight, bias, eps, op);
  return at::empty_symint({x.sym_size(0), C}, x.options());
}

at::Tensor norm_combine_meta(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                             const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                             double eps, const at::Tensor& logits, int64_t radix, int64_t cardinality) {
  const char* op = "split_attention_norm_combine";
  check_combine_logits(x, logits, radix, cardinality, op);
  check_norm_args(x, mean, var, weight, bias, eps, op);
  const c10::SymInt C = x.sym_size(1) / radix;
  return at::empty_symint({x.sym_size(0), C, x.sym_size(2), x.sym_size(3)},
                          x.options().memory_format(activation_format(x)));
}

std::tuple<at::Tensor, at::Tensor> norm_backward_reduce_meta(const at::Tensor& grad_out, const at::Tensor& x,
                                                             const at::Tensor& mean, const at::Tensor& var,
                                                             const std::optional<at::Tensor>& weight,
                                                             const std::optional<at::Tensor>& bias, double eps,
                                                             const at::Tensor& logits, int64_t radix,
                                                             int64_t cardinality) {
  const char* op = "split_attention_norm_backward_reduce";
  check_combine_logits(x, logits, radix, cardinality, op);
  check_grad_out(grad_out, x, radix, op);
  check_norm_args(x, mean, var, weight, bias, eps, op);
  return {at::empty_symint(logits.sym_sizes(), logits.options()),
          at::empty_symint({4, x.sym_size(0), x.sym_size(1)}, x.options().dtype(bn_stats_dtype(x)))};
}

std::tuple<at::Tensor, at::Tensor> norm_backward_sums_meta(const at::Tensor& sums, const at::Tensor& logits,
                                                           const at::Tensor& grad_gap, const at::Tensor& var,
                                                           double eps, int64_t radix, int64_t cardinality,
                                                           int64_t hw) {
  check_norm_sums_args(sums, logits, grad_gap, var, eps, radix, cardinality, hw);
  return {at::empty_symint({sums.sym_size(2)}, var.options()), at::empty_symint({sums.sym_size(2)}, var.options())};
}

at::Tensor norm_backward_input_meta(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean,
                                    const at::Tensor& var, const std::optional<at::Tensor>& weight,
                                    const std::optional<at::Tensor>& bias, double eps, const at::Tensor& logits,
                                    const at::Tensor& grad_gap, const at::Tensor& sum_dy,
                                    const at::Tensor& sum_dy_xhat, const at::Tensor& count, int64_t radix,
                                    int64_t cardinality) {
  check_norm_backward_input_args(grad_out, x, mean, var, weight, bias, eps, logits, grad_gap, sum_dy, sum_dy_xhat,
                                 count, radix, cardinality);
  return at::empty_symint(x.sym_sizes(), x.options().memory_format(activation_format(x)));
}

}  // namespace

}  // namespace resnest_cuda

TORCH_LIBRARY_FRAGMENT(resnest_cuda, m) {
  m.def("split_attention_pool(Tensor x, int radix) -> Tensor");
  m.def("split_attention_pool_backward(Tensor grad_gap, int radix, SymInt height, SymInt width) -> Tensor");
  m.def("split_attention_combine(Tensor x, Tensor logits, int radix, int cardinality) -> Tensor");
  m.def(
      "split_attention_combine_backward(Tensor grad_out, Tensor x, Tensor logits, int radix, int cardinality)"
      " -> (Tensor, Tensor)");
  // The two halves of the combine backward for a caller that knows grad_gap before writing grad_x (the eager
  // fused path of SplitAttentionConv2d): the logits gradient alone (a reduction over H, W), then
  // grad_x = softmax_r(logits) * grad_out + grad_gap / (H*W), written once, in grad_out's memory format (the
  // caller passes grad_out in x's format, so the gradient of a channels_last x is channels_last).
  m.def(
      "split_attention_logits_backward(Tensor grad_out, Tensor x, Tensor logits, int radix, int cardinality)"
      " -> Tensor");
  m.def(
      "split_attention_input_backward(Tensor grad_out, Tensor logits, Tensor grad_gap, int radix, int cardinality)"
      " -> Tensor");
  // The pool and the combine of x read as u = relu(batch_norm(x)) with the given statistics
  // and affine parameters: bit for bit the op applied to batch_norm_act(x, mean, var, weight, bias, None, eps,
  // True), without writing u (the eager fused path of SplitAttentionConv2d, resnest_cuda/ops.py).
  m.def(
      "split_attention_norm_pool(Tensor x, Tensor mean, Tensor var, Tensor? weight, Tensor? bias, float eps,"
      " int radix) -> Tensor");
  m.def(
      "split_attention_norm_combine(Tensor x, Tensor mean, Tensor var, Tensor? weight, Tensor? bias, float eps,"
      " Tensor logits, int radix, int cardinality) -> Tensor");
  // The backward of that tail with BatchNorm + ReLU in three steps that read x and grad_out only (u is never
  // written): one reduction over H, W giving the logits gradient and four per-(b, channel) sums [4, B, R*C] (of
  // mask * dout, mask * dout * (x - mean), mask, mask * (x - mean); mask: where the ReLU passed), then, once the
  // caller knows grad_gap (autograd through the attention MLP), the BatchNorm's per-channel sums of grad_u and
  // grad_u * xhat, then grad_x in one elementwise pass (grad_u = mask * (softmax_r(logits) * grad_out +
  // grad_gap / HW) recomputed, never written). Between the last two a SyncBatchNorm all-reduces the sums.
  m.def(
      "split_attention_norm_backward_reduce(Tensor grad_out, Tensor x, Tensor mean, Tensor var, Tensor? weight,"
      " Tensor? bias, float eps, Tensor logits, int radix, int cardinality) -> (Tensor, Tensor)");
  m.def(
      "split_attention_norm_backward_sums(Tensor sums, Tensor logits, Tensor grad_gap, Tensor var, float eps,"
      " int radix, int cardinality, int hw) -> (Tensor, Tensor)");
  m.def(
      "split_attention_norm_backward_input(Tensor grad_out, Tensor x, Tensor mean, Tensor var, Tensor? weight,"
      " Tensor? bias, float eps, Tensor logits, Tensor grad_gap, Tensor sum_dy, Tensor sum_dy_xhat, Tensor count,"
      " int radix, int cardinality) -> Tensor");
}

TORCH_LIBRARY_IMPL(resnest_cuda, CompositeExplicitAutograd, m) {
  m.impl("split_attention_pool_backward", &resnest_cuda::split_attention_pool_backward);
}

TORCH_LIBRARY_IMPL(resnest_cuda, Meta, m) {
  m.impl("split_attention_pool", &resnest_cuda::pool_meta);
  m.impl("split_attention_combine", &resnest_cuda::combine_meta);
  m.impl("split_attention_combine_backward", &resnest_cuda::combine_backward_meta);
  m.impl("split_attention_logits_backward", &resnest_cuda::logits_backward_meta);
  m.impl("split_attention_input_backward", &resnest_cuda::input_backward_meta);
  m.impl("split_attention_norm_pool", &resnest_cuda::norm_pool_meta);
  m.impl("split_attention_norm_combine", &resnest_cuda::norm_combine_meta);
  m.impl("split_attention_norm_backward_reduce", &resnest_cuda::norm_backward_reduce_meta);
  m.impl("split_attention_norm_backward_sums", &resnest_cuda::norm_backward_sums_meta);
  m.impl("split_attention_norm_backward_input", &resnest_cuda::norm_backward_input_meta);
}
