#pragma once
// Everything a .cu file of this project needs from the CUDA runtime, in one place, so that each .cu source builds
// two ways from the same text:
// - with nvcc into resnest_cuda._C (the CUDA kernels of the resnest_cuda ops);
// - with the host compiler and RESNEST_EMULATE_CUDA into resnest_cuda._C_emu, where every launch runs on the CPU
//   in the emulator (csrc/emulation/) and the same implementations are registered as resnest_emu::<op> CPU
//   kernels (same names and schemas).
//
// The rules for a kernel source:
// - launch every kernel with launch(kernel, grid, block, smem, stream, args...) (never <<<>>>): it checks the
//   launch error;
// - declare shared memory with RESNEST_SHARED(type, name, count) and RESNEST_DYNAMIC_SHARED(type, name);
// - cap grid-stride grids with grid_cap(cap), size them with sm_count() / resident_blocks(...);
// - check tensors with check_kernel_device, guard with DeviceGuard, launch on current_stream();
// - register the kernels with RESNEST_CUDA_KERNELS(m) { m.impl(...); }.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#if defined(RESNEST_EMULATE_CUDA)
#include "emulation/emulator.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif

#if defined(RESNEST_EMULATE_CUDA)
#define RESNEST_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(resnest_emu, CPU, m)
#define RESNEST_SHARED(type, name, count) type* name = ::resnest_emu::block_shared<type>((count), __FILE__, __LINE__)
#define RESNEST_DYNAMIC_SHARED(type, name) type* name = ::resnest_emu::dynamic_shared<type>()
#else
#define RESNEST_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(resnest_cuda, CUDA, m)
#define RESNEST_SHARED(type, name, count) __shared__ type name[count]
#define RESNEST_DYNAMIC_SHARED(type, name)                    \
  extern __shared__ __align__(16) unsigned char name##_raw[]; \
  type* name = reinterpret_cast<type*>(name##_raw)
#endif

namespace resnest_cuda {

#if defined(RESNEST_EMULATE_CUDA)
constexpr bool kEmulatedCuda = true;
using DeviceGuard = ::resnest_emu::DeviceGuard;
inline cudaStream_t current_stream() { return nullptr; }
#else
constexpr bool kEmulatedCuda = false;
using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }
#endif

// The tensors a kernel reads and writes live on the GPU (in the emulated build: on the CPU, where it runs).
inline void check_kernel_device(const at::Tensor& t, const char* op, const char* arg) {
  if (kEmulatedCuda) {
    TORCH_CHECK(t.device().is_cpu(), op, ": ", arg, " must be a CPU tensor for the emulated CUDA kernels, got ",
                t.device());
  } else {
    TORCH_CHECK(t.is_cuda(), op, ": ", arg, " must be a CUDA tensor, got ", t.device());
  }
}

// Streaming multiprocessors of the current device: launch sizing only. Cached per device on a GPU; the emulated
// build reads RESNEST_EMU_SM_COUNT on every call (tests change it).
inline int sm_count() {
  int device = 0;
#if defined(RESNEST_EMULATE_CUDA)
  int count = 0;
  TORCH_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) == cudaSuccess);
  return count;
#else
  constexpr int kMaxDevices = 64;
  static int cache[kMaxDevices] = {0};
  C10_CUDA_CHECK(cudaGetDevice(&device));
  if (device >= kMaxDevices) device = kMaxDevices - 1;
  if (cache[device] == 0) {
    int count = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    cache[device] = count;
  }
  return cache[device];
#endif
}

// Blocks that keep every SM busy for `waves` waves at the kernel's occupancy.
template <typename Kernel>
int64_t resident_blocks(Kernel kernel, int threads, size_t smem = 0, int waves = 4) {
  int per_sm = 0;
#if defined(RESNEST_EMULATE_CUDA)
  TORCH_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem) == cudaSuccess,
              "occupancy query failed for ", threads, " threads");
#else
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
#endif
  return int64_t(std::max(per_sm, 1)) * sm_count() * waves;
}

// The number of blocks a grid-stride loop is given at most: `cap`, or fewer in the emulated build when
// RESNEST_EMU_MAX_BLOCKS asks for it (so that every stride loop runs more than once per thread).
inline int64_t grid_cap(int64_t cap) {
#if defined(RESNEST_EMULATE_CUDA)
  return std::min<int64_t>(cap, ::resnest_emu::env_int("RESNEST_EMU_MAX_BLOCKS", cap));
#else
  return cap;
#endif
}

// Launches kernel<<<grid, block, smem, stream>>>(args...) and raises the launch error, if any.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
#if defined(RESNEST_EMULATE_CUDA)
  (void)stream;
  const cudaError_t e = ::resnest_emu::launch(kernel, grid, block, smem, std::forward<Args>(args)...);
  if (e != cudaSuccess) {
    const std::string detail = ::resnest_emu::last_error.detail;
    cudaGetLastError();
    TORCH_CHECK(false, "CUDA error: ", cudaGetErrorString(e), " (emulated launch: ", detail, ")");
  }
#else
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

// Sum over the 32 lanes of a warp (every lane active); the result is valid in lane 0.
template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

}  // namespace resnest_cuda
