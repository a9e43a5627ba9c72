#pragma once
// Fused split attention (ResNeSt): shared declarations and input checks for the CPU and CUDA kernels.
//
// Layouts (R = radix, K = cardinality, C = channels per split):
//   x       [B, R*C, H, W]  radix-major: channel r*C + k*(C/K) + c
//   logits  [B, R*C] or [B, R*C, 1, 1], cardinal-major (fc2 order): index k*(R*C/K) + r*(C/K) + c
//   gap     [B, C]          mean over H, W of the sum over r
//   out     [B, C, H, W]    sum over r of softmax_r(logits) * x_r (sigmoid when R == 1)
#include <ATen/ATen.h>

#include <tuple>

namespace resnest_cuda {

// Validates x for both ops and returns C (channels per split).
inline int64_t check_split_attention_input(const at::Tensor& x, int64_t radix, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be a 4-D tensor [B, radix*C, H, W], got ", x.dim(), " dims");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be float64/float32/float16/bfloat16, got ",
              x.scalar_type());
  TORCH_CHECK(radix >= 1, op, ": radix must be >= 1, got ", radix);
  TORCH_CHECK(x.size(1) % radix == 0, op, ": x.shape[1] (", x.size(1), ") must be divisible by radix (", radix,
              ")");
  TORCH_CHECK(x.size(2) >= 1 && x.size(3) >= 1, op, ": x must have H, W >= 1, got ", x.sizes());
  return x.size(1) / radix;
}

inline void check_combine_logits(const at::Tensor& x, const at::Tensor& logits, int64_t radix, int64_t cardinality,
                                 const char* op) {
  const int64_t C = check_split_attention_input(x, radix, op);
  TORCH_CHECK(cardinality >= 1, op, ": cardinality must be >= 1, got ", cardinality);
  TORCH_CHECK(C % cardinality == 0, op, ": channels per split (", C, ") must be divisible by cardinality (",
              cardinality, ")");
  const bool flat = logits.dim() == 2;
  const bool conv = logits.dim() == 4 && logits.size(2) == 1 && logits.size(3) == 1;
  TORCH_CHECK((flat || conv) && logits.size(0) == x.size(0) && logits.size(1) == x.size(1), op,
              ": logits must have shape [", x.size(0), ", ", x.size(1), "] or [", x.size(0), ", ", x.size(1),
              ", 1, 1], got ", logits.sizes());
  TORCH_CHECK(logits.scalar_type() == x.scalar_type(), op, ": logits dtype (", logits.scalar_type(),
              ") must match x dtype (", x.scalar_type(), ")");
  TORCH_CHECK(logits.device() == x.device(), op, ": logits is on ", logits.device(), " but x is on ", x.device());
}

// grad_out of the combine op must be [B, C, H, W] on x's device.
inline void check_grad_out(const at::Tensor& grad_out, const at::Tensor& x, int64_t radix, const char* op) {
  const int64_t C = x.size(1) / radix;
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == x.size(0) && grad_out.size(1) == C &&
                  grad_out.size(2) == x.size(2) && grad_out.size(3) == x.size(3),
              op, ": grad_out must have shape [", x.size(0), ", ", C, ", ", x.size(2), ", ", x.size(3), "], got ",
              grad_out.sizes());
  TORCH_CHECK(grad_out.device() == x.device(), op, ": grad_out is on ", grad_out.device(), " but x is on ",
              x.device());
}

// Arguments of split_attention_input_backward: grad_out [B, C, H, W], logits [B, R*C(, 1, 1)], grad_gap [B, C].
inline void check_input_backward_args(const at::Tensor& grad_out, const at::Tensor& logits,
                                      const at::Tensor& grad_gap, int64_t radix, int64_t cardinality) {
  const char* op = "split_attention_input_backward";
  TORCH_CHECK(grad_out.dim() == 4 && at::isFloatingType(grad_out.scalar_type()), op,
              ": grad_out must be a floating 4-D tensor [B, C, H, W], got ", grad_out.sizes());
  TORCH_CHECK(radix >= 1 && cardinality >= 1, op, ": radix and cardinality must be >= 1");
  const int64_t B = grad_out.size(0), C = grad_out.size(1);
  TORCH_CHECK(C % cardinality == 0, op, ": C (", C, ") must be divisible by cardinality (", cardinality, ")");
  TORCH_CHECK((logits.dim() == 2 || (logits.dim() == 4 && logits.size(2) == 1 && logits.size(3) == 1)) &&
                  logits.size(0) == B && logits.size(1) == radix * C,
              op, ": logits must have shape [", B, ", ", radix * C, "] or [", B, ", ", radix * C, ", 1, 1], got ",
              logits.sizes());
  TORCH_CHECK(grad_gap.dim() == 2 && grad_gap.size(0) == B && grad_gap.size(1) == C, op,
              ": grad_gap must have shape [", B, ", ", C, "], got ", grad_gap.sizes());
  TORCH_CHECK(logits.scalar_type() == grad_out.scalar_type(), op, ": logits dtype must match grad_out dtype");
  TORCH_CHECK(logits.device() == grad_out.device() && grad_gap.device() == grad_out.device(), op,
              ": grad_out, logits and grad_gap must be on one device");
}

// Memory format used for a 4-D activation and its outputs: channels_last when x is channels_last-contiguous
// (and not also NCHW-contiguous, as happens for 1x1 maps), NCHW otherwise; other strided inputs are copied to
// NCHW first. resnest_cuda/ops.py mirrors this rule in the fake kernels.
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

}  // namespace resnest_cuda
