// Schemas of the fused BatchNorm ops and their Meta kernels. Autograd, the running statistics and the process-group
// reduction of SyncBatchNorm live in Python (resnest_cuda/batch_norm.py); the CPU and CUDA kernels register
// themselves in cpu/ and cuda/. The Meta kernels apply the same checks (batch_norm_act.h) and layout rule, so fake
// tensors (torch.compile, torch.export, opcheck) raise the same errors and produce the same layouts.
#include <torch/library.h>

#include "batch_norm_act.h"

namespace resnest_cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> stats_meta(const at::Tensor& x, const std::optional<at::Tensor>& rows,
                                                          const std::optional<at::Tensor>& running_mean,
                                                          const std::optional<at::Tensor>& running_var,
                                                          const std::optional<at::Tensor>& num_batches_tracked,
                                                          double momentum) {
  check_stats_args(x, rows, running_mean, running_var, num_batches_tracked, momentum);
  const auto options = x.options().dtype(bn_stats_dtype(x));
  return {at::empty_symint({x.sym_size(1)}, options), at::empty_symint({x.sym_size(1)}, options),
          at::empty({}, options)};
}

at::Tensor act_meta(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                    const std::optional<at::Tensor>& residual, double eps, bool relu) {
  check_act_args(x, mean, var, weight, bias, residual, eps);
  return empty_like_x(x);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_reduce_meta(
    const at::Tensor& grad_out, const at::Tensor& x, const std::optional<at::Tensor>& y, const at::Tensor& mean,
    const at::Tensor& var, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    bool relu, const std::optional<at::Tensor>& grad_out2, const std::optional<at::Tensor>& grad_out3) {
  check_backward_reduce_args(grad_out, x, y, mean, var, weight, bias, eps, relu, grad_out2, grad_out3);
  const auto options = x.options().dtype(bn_stats_dtype(x));
  return {at::empty_symint({x.sym_size(1)}, options), at::empty_symint({x.sym_size(1)}, options),
          y.has_value() ? empty_like_x(x) : at::empty({0}, x.options())};
}

at::Tensor backward_input_meta(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean,
                               const at::Tensor& var, const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, const at::Tensor& sum_dy,
                               const at::Tensor& sum_dy_xhat, const at::Tensor& count,
                               const std::optional<at::Tensor>& rows, double eps, bool relu) {
  check_backward_input_args(grad_out, x, mean, var, weight, bias, sum_dy, sum_dy_xhat, count, rows, eps);
  return empty_like_x(x);
}

}  // namespace
}  // namespace resnest_cuda

TORCH_LIBRARY_FRAGMENT(resnest_cuda, m) {
  // With running_mean and running_var it also updates them in place, as a training-mode BatchNorm does (see
  // update_running_stats in batch_norm_act.h; momentum < 0: the cumulative average).
  m.def(
      "batch_norm_stats(Tensor x, Tensor? rows=None, Tensor(a!)? running_mean=None, Tensor(b!)? running_var=None,"
      " Tensor(c!)? num_batches_tracked=None, float momentum=0.1) -> (Tensor mean, Tensor var, Tensor count)");
  m.def(
      "batch_norm_act(Tensor x, Tensor mean, Tensor var, Tensor? weight, Tensor? bias, Tensor? residual, float eps,"
      " bool relu) -> Tensor");
  // g = grad_out where the ReLU passed (grad_out itself with relu=False). With y, the forward output (a residual was
  // added before the ReLU), the mask is read from y and g is written as grad_act (the residual's gradient, and the
  // grad_out of batch_norm_act_backward_input with relu=False); without it the mask is recomputed from x, mean, var,
  // weight and bias as the forward computed y, and grad_act is empty. grad_out2, grad_out3 (with y only): further
  // parts of the output gradient (the gradients of aliases of y that other consumers received), summed with
  // grad_out inside the reduction (in the accumulation type) instead of by autograd beforehand.
  m.def(
      "batch_norm_act_backward_reduce(Tensor grad_out, Tensor x, Tensor? y, Tensor mean, Tensor var, Tensor? weight,"
      " Tensor? bias, float eps, bool relu, Tensor? grad_out2=None, Tensor? grad_out3=None) -> (Tensor sum_dy,"
      " Tensor sum_dy_xhat, Tensor grad_act)");
  // relu=True: grad_out is the gradient of y = relu(bn(x)) (no residual), the mask recomputed from x; relu=False:
  // grad_out is the gradient of bn(x) itself (g).
  m.def(
      "batch_norm_act_backward_input(Tensor grad_out, Tensor x, Tensor mean, Tensor var, Tensor? weight,"
      " Tensor? bias, Tensor sum_dy, Tensor sum_dy_xhat, Tensor count, Tensor? rows, float eps, bool relu)"
      " -> Tensor grad_x");
}

TORCH_LIBRARY_IMPL(resnest_cuda, Meta, m) {
  m.impl("batch_norm_stats", &resnest_cuda::stats_meta);
  m.impl("batch_norm_act", &resnest_cuda::act_meta);
  m.impl("batch_norm_act_backward_reduce", &resnest_cuda::backward_reduce_meta);
  m.impl("batch_norm_act_backward_input", &resnest_cuda::backward_input_meta);
}
