// The operator library namespace. Each op folder adds its schemas with TORCH_LIBRARY_FRAGMENT.
#include <torch/library.h>

TORCH_LIBRARY(resnest_cuda, m) {}
