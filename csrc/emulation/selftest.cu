// Kernels that check the CUDA emulator itself (tests/test_emulator.py): what its barriers, shuffles, schedules
// and shared memory do, and the faults and launch configurations it must refuse. Built into resnest_cuda._C_emu
// only, as resnest_emu::_emu_selftest(case, threads, blocks) -> float64 tensor; it compiles with nvcc too (the
// compile check builds every .cu source), where nothing registers it.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "../cuda_support.cuh"

namespace resnest_cuda {
namespace {

// out[block * threads + t] = the value lane t receives from each shuffle kind, in four slices.
__global__ void shuffle_kernel(double* out, int threads, int blocks) {
  const int t = threadIdx.x, n = threads * blocks;
  double* o = out + blockIdx.x * threads + t;
  const float v = static_cast<float>(t);
  o[0] = __shfl_down_sync(0xffffffffu, v, 1);
  o[n] = __shfl_up_sync(0xffffffffu, v, 2);
  o[2 * n] = __shfl_xor_sync(0xffffffffu, v, 5);
  o[3 * n] = __shfl_sync(0xffffffffu, v, 7, 16);
}

// The order threads run in: a ticket before a __syncwarp, a ticket after it, then a __syncthreads.
__global__ void order_kernel(double* out, unsigned int* counter, int threads, int blocks) {
  const int n = threads * blocks;
  double* o = out + blockIdx.x * threads + threadIdx.x;
  o[0] = atomicAdd(counter, 1u);
  __syncwarp();
  o[n] = atomicAdd(counter, 1u);
  __syncthreads();
  o[2 * n] = atomicAdd(counter, 1u);
}

// What a block reads from shared memory before writing it (static, then dynamic), after earlier blocks wrote it.
__global__ void poison_kernel(double* out, int threads, int blocks) {
  RESNEST_SHARED(float, s, 1024);
  RESNEST_DYNAMIC_SHARED(float, d);
  const int t = threadIdx.x, n = threads * blocks;
  out[blockIdx.x * threads + t] = s[t];
  out[n + blockIdx.x * threads + t] = d[t];
  __syncthreads();
  s[t] = 1.0f;
  d[t] = 2.0f;
}

// Faults the emulator must report, each at its source line.
__global__ void divergent_syncthreads_kernel(double* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void exit_before_syncthreads_kernel(double* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void exited_lane_kernel(double* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0, 1);
}

__global__ void deadlock_kernel(double* out) {
  if (threadIdx.x == 0) __syncwarp(0x3u);  // waits for lane 1, which waits at the __syncthreads below
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void warp_divergence_kernel(double* out) {
  if (threadIdx.x < 16) {
    __syncwarp();
  } else {
    __syncwarp();
  }
  out[threadIdx.x] = 1;
}

__global__ void foreign_mask_kernel(double* out) {
  out[threadIdx.x] = __shfl_down_sync(0x1u, 1.0, 1);  // lanes other than 0 are not in their own mask
}

__global__ void big_shared_kernel(double* out) {
  RESNEST_SHARED(char, big, 40 * 1024);
  big[threadIdx.x] = 0;
  out[threadIdx.x] = 1;
}

__global__ void plain_kernel(double* out) { out[threadIdx.x] = 1; }

// Out-of-bounds accesses that only the AddressSanitizer build reports (never run them in another build).
__global__ void global_overflow_kernel(double* out, int64_t size) {
  if (threadIdx.x == 0) out[size] = 1;  // one past the end of `out`
}

__global__ void shared_overflow_kernel(double* out) {
  RESNEST_SHARED(float, s, 32);
  s[threadIdx.x + 1] = 1.0f;  // thread 31 writes one past the end
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

at::Tensor selftest(c10::string_view name_view, int64_t threads, int64_t blocks) {
  const std::string name(name_view);
  const int t = static_cast<int>(threads), b = static_cast<int>(blocks);
  at::Tensor out = at::full({4 * threads * blocks + 1}, -7.0, at::TensorOptions().dtype(at::kDouble));
  double* o = out.mutable_data_ptr<double>();
  const cudaStream_t s = current_stream();
  if (name == "shuffle") {
    launch(shuffle_kernel, b, t, 0, s, o, t, b);
  } else if (name == "order") {
    at::Tensor counter = at::zeros({1}, at::TensorOptions().dtype(at::kInt));
    launch(order_kernel, b, t, 0, s, o, reinterpret_cast<unsigned int*>(counter.mutable_data_ptr<int>()), t, b);
  } else if (name == "poison") {
    launch(poison_kernel, b, t, t * sizeof(float), s, o, t, b);
  } else if (name == "divergent_syncthreads") {
    launch(divergent_syncthreads_kernel, b, t, 0, s, o);
  } else if (name == "exit_before_syncthreads") {
    launch(exit_before_syncthreads_kernel, b, t, 0, s, o);
  } else if (name == "exited_lane") {
    launch(exited_lane_kernel, b, t, 0, s, o);
  } else if (name == "deadlock") {
    launch(deadlock_kernel, b, t, 0, s, o);
  } else if (name == "warp_divergence") {
    launch(warp_divergence_kernel, b, t, 0, s, o);
  } else if (name == "foreign_mask") {
    launch(foreign_mask_kernel, b, t, 0, s, o);
  } else if (name == "big_shared") {
    launch(big_shared_kernel, b, t, 10 * 1024, s, o);
  } else if (name == "plain") {
    launch(plain_kernel, b, t, 0, s, o);
  } else if (name == "global_overflow") {
    launch(global_overflow_kernel, 1, t, 0, s, o, out.numel());
  } else if (name == "shared_overflow") {
    launch(shared_overflow_kernel, 1, 32, 0, s, o);
  } else if (name == "grid_y") {
    launch(plain_kernel, dim3(1, static_cast<unsigned int>(blocks)), t, 0, s, o);
  } else if (name == "dynamic_shared") {
    launch(plain_kernel, b, t, static_cast<size_t>(blocks), s, o);  // `blocks` bytes of dynamic shared memory
  } else if (name == "grid_cap") {
    o[0] = static_cast<double>(grid_cap(threads));
  } else if (name == "sm_count") {
    o[0] = static_cast<double>(sm_count());
  } else {
    TORCH_CHECK(false, "_emu_selftest: unknown case '", name, "'");
  }
  return out;
}

}  // namespace
}  // namespace resnest_cuda

#if defined(RESNEST_EMULATE_CUDA)
TORCH_LIBRARY_FRAGMENT(resnest_emu, m) { m.def("_emu_selftest(str name, int threads, int blocks) -> Tensor"); }

TORCH_LIBRARY_IMPL(resnest_emu, CompositeExplicitAutograd, m) { m.impl("_emu_selftest", &resnest_cuda::selftest); }
#endif
