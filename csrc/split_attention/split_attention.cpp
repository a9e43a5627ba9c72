// Schemas of the split-attention ops. Autograd and fake (meta) kernels are registered in Python
// (resnest_cuda/ops.py); the CPU and CUDA kernels register themselves in cpu/ and cuda/.
#include <torch/library.h>

#include "split_attention.h"

namespace resnest_cuda {

// d(gap)/dx is the same constant 1/(H*W) for every element of a split: the gradient is returned as a broadcast
// view (strides [R*C, 1, 0, 0]) of a [B, R*C] tensor instead of being written out. Autograd adds it in place to
// the combine op's dx, so the full-size gradient is materialised once (device-agnostic, a few tiny kernels).
at::Tensor split_attention_pool_backward(const at::Tensor& grad_gap, int64_t radix, int64_t height, int64_t width) {
  TORCH_CHECK(grad_gap.dim() == 2, "split_attention_pool_backward: grad_gap must be [B, C], got ", grad_gap.sizes());
  TORCH_CHECK(radix >= 1 && height >= 1 && width >= 1,
              "split_attention_pool_backward: radix, height and width must be >= 1");
  const int64_t batch = grad_gap.size(0), rc = grad_gap.size(1) * radix;
  const at::Tensor per_channel = (grad_gap / static_cast<double>(height * width)).repeat({1, radix});
  return per_channel.view({batch, rc, 1, 1}).expand({batch, rc, height, width});
}

}  // namespace resnest_cuda

TORCH_LIBRARY_FRAGMENT(resnest_cuda, m) {
  m.def("split_attention_pool(Tensor x, int radix) -> Tensor");
  m.def("split_attention_pool_backward(Tensor grad_gap, int radix, int height, int width) -> Tensor");
  m.def("split_attention_combine(Tensor x, Tensor logits, int radix, int cardinality) -> Tensor");
  m.def(
      "split_attention_combine_backward(Tensor grad_out, Tensor x, Tensor logits, int radix, int cardinality)"
      " -> (Tensor, Tensor)");
  // The two halves of the combine backward for a caller that knows grad_gap before writing grad_x (the eager
  // fused path of SplitAttentionConv2d): the logits gradient alone (a reduction over H, W), then
  // grad_x = softmax_r(logits) * grad_out + grad_gap / (H*W), written once.
  m.def(
      "split_attention_logits_backward(Tensor grad_out, Tensor x, Tensor logits, int radix, int cardinality)"
      " -> Tensor");
  m.def(
      "split_attention_input_backward(Tensor grad_out, Tensor logits, Tensor grad_gap, int radix, int cardinality)"
      " -> Tensor");
}

TORCH_LIBRARY_IMPL(resnest_cuda, CompositeExplicitAutograd, m) {
  m.impl("split_attention_pool_backward", &resnest_cuda::split_attention_pool_backward);
}
