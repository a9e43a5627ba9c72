#pragma once
// Emulated CUDA, part 1: the types, built-in variables, intrinsics and runtime calls that the kernels and their
// launchers use, for the host compiler (see emulator.h for how kernels run).
//
// Nothing here talks to a GPU. The runtime calls answer from the emulator's settings: the SM count reported by
// cudaDeviceGetAttribute is RESNEST_EMU_SM_COUNT (default 4), occupancy is what an sm_90 multiprocessor allows
// by threads and shared memory, and launch errors are kept for cudaGetLastError as CUDA does.
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

// ---------------------------------------------------------------------------------------------------------
// Qualifiers: host functions, all of them.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Shared memory is declared with RESNEST_SHARED / RESNEST_DYNAMIC_SHARED (csrc/cuda_support.cuh), which the
// emulator backs with block-local, poisoned storage; a bare __shared__ would be one static variable for every
// block, so it is refused at compile time.
#define __shared__ __shared___is_not_emulated__declare_shared_memory_with_RESNEST_SHARED

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

constexpr int warpSize = 32;

// The built-in variables of the thread that runs: set by the emulator before it switches to a thread. Launches
// are serialised (one kernel runs at a time in a process), so one copy serves.
inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

// ---------------------------------------------------------------------------------------------------------
// Runtime types and calls.
struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorLaunchFailure = 719,
};

enum cudaDeviceAttr : int {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxThreadsPerMultiProcessor = 39,
};

namespace resnest_emu {

// Limits of an sm_90 device that a launch is checked against.
constexpr unsigned int kMaxThreadsPerBlock = 1024;
constexpr unsigned int kMaxBlockDim[3] = {1024, 1024, 64};
constexpr unsigned int kMaxGridDim[3] = {2147483647u, 65535u, 65535u};
constexpr size_t kMaxSharedPerBlock = 48 * 1024;  // static + dynamic, without the opt-in attribute
constexpr int kMaxThreadsPerSM = 2048;
constexpr int kMaxBlocksPerSM = 32;
constexpr size_t kSharedPerSM = 228 * 1024;

// An integer setting from the environment: `fallback` when unset; a clear error when not a positive integer.
inline int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long long parsed = std::strtoll(v, &end, 10);
  TORCH_CHECK(end != v && *end == '\0' && parsed >= 1, name, " must be a positive integer, got '", v, "'");
  return parsed;
}

inline int sm_count() { return static_cast<int>(env_int("RESNEST_EMU_SM_COUNT", 4)); }

// The launch error of the last kernel launch, returned (and cleared) by cudaGetLastError, with its detail.
struct LastError {
  cudaError_t code = cudaSuccess;
  std::string detail;
};
inline LastError last_error;

}  // namespace resnest_emu

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = resnest_emu::last_error.code;
  resnest_emu::last_error.code = cudaSuccess;
  return e;
}

inline cudaError_t cudaPeekAtLastError() { return resnest_emu::last_error.code; }

inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = resnest_emu::kMaxThreadsPerBlock; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = resnest_emu::kMaxSharedPerBlock; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = warpSize; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = resnest_emu::sm_count(); return cudaSuccess;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = resnest_emu::kMaxThreadsPerSM; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

// Resident blocks per SM, limited by threads, the block count and shared memory (registers are not modelled).
template <typename Kernel>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int threads, size_t smem) {
  if (threads <= 0 || threads > static_cast<int>(resnest_emu::kMaxThreadsPerBlock)) return cudaErrorInvalidValue;
  int n = std::min(resnest_emu::kMaxThreadsPerSM / threads, resnest_emu::kMaxBlocksPerSM);
  if (smem > 0) n = std::min<int>(n, static_cast<int>(resnest_emu::kSharedPerSM / smem));
  *blocks = n;
  return cudaSuccess;
}

// ---------------------------------------------------------------------------------------------------------
// Device functions: min/max as CUDA overloads them (fmin/fmax for floating point: a NaN operand yields the other).
template <typename T, typename = std::enable_if_t<std::is_integral_v<T>>>
inline T min(T a, T b) {
  return a < b ? a : b;
}
template <typename T, typename = std::enable_if_t<std::is_integral_v<T>>>
inline T max(T a, T b) {
  return a < b ? b : a;
}
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// Intrinsics. The fast-math ones (__expf, __logf, __fdividef) are the exact functions here: the emulator checks
// logic, not the last bits of the hardware approximations.
inline int __popc(unsigned int v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __ffsll(long long v) { return __builtin_ffsll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned int>(v)); }
inline int __clzll(long long v) { return v == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(v)); }
inline float __expf(float v) { return std::exp(v); }
inline float __logf(float v) { return std::log(v); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline int __float2int_rn(float v) { return static_cast<int>(std::nearbyint(v)); }
inline int __float2int_rz(float v) { return static_cast<int>(v); }
inline int __float2int_rd(float v) { return static_cast<int>(std::floor(v)); }
inline int __float2int_ru(float v) { return static_cast<int>(std::ceil(v)); }
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline void __threadfence() {}
inline void __threadfence_block() {}

// Atomics: threads of the emulator never interleave inside one call, so a plain read-modify-write is atomic.
template <typename T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
inline T atomicSub(T* p, T v) {
  const T old = *p;
  *p = old - v;
  return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
  const T old = *p;
  *p = max(old, v);
  return old;
}
template <typename T>
inline T atomicMin(T* p, T v) {
  const T old = *p;
  *p = min(old, v);
  return old;
}
template <typename T>
inline T atomicOr(T* p, T v) {
  const T old = *p;
  *p = old | v;
  return old;
}
template <typename T>
inline T atomicAnd(T* p, T v) {
  const T old = *p;
  *p = old & v;
  return old;
}
template <typename T>
inline T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}
template <typename T>
inline T atomicCAS(T* p, T compare, T v) {
  const T old = *p;
  if (old == compare) *p = v;
  return old;
}
