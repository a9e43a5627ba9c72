// Schemas of the split-attention ops. Autograd and fake (meta) kernels are registered in Python
// (resnest_cuda/ops.py); the CPU and CUDA kernels register themselves in cpu/ and cuda/.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(resnest_cuda, m) {
  m.def("split_attention_pool(Tensor x, int radix) -> Tensor");
  // x is passed only for its shape, dtype and memory format; its values are not read.
  m.def("split_attention_pool_backward(Tensor grad_gap, Tensor x, int radix) -> Tensor");
  m.def("split_attention_combine(Tensor x, Tensor logits, int radix, int cardinality) -> Tensor");
  m.def(
      "split_attention_combine_backward(Tensor grad_out, Tensor x, Tensor logits, int radix, int cardinality)"
      " -> (Tensor, Tensor)");
}
