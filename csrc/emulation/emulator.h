#pragma once
// Emulated CUDA, part 2: how a kernel runs. The .cu sources compile unchanged with the host compiler
// (RESNEST_EMULATE_CUDA, csrc/cuda_support.cuh) and every launch runs here, on the CPU:
//
// - Blocks run one after another, in the order the schedule gives (forward, reverse or shuffled).
// - The threads of a block are cooperative fibers (ucontext), so __syncthreads, __syncwarp and the __shfl_*_sync
//   intrinsics are real barriers: a thread that reaches one stops until every thread it waits for has arrived;
//   shuffles exchange their values when every lane of the mask has arrived.
// - Between barriers the schedule (RESNEST_EMU_SCHEDULE) picks the order threads run in:
//     forward / reverse / shuffle           round robin: every thread runs until it blocks, in that order (a new
//                                           random order each round for shuffle), then the barriers complete;
//     warps-forward / warps-reverse /       warp-serial: one warp runs alone up to its next __syncthreads
//     warps-shuffle                         (its warp barriers complete as it goes), then the next warp, as a GPU
//                                           may schedule them. Only these orders catch a missing __syncthreads
//                                           between a warp's reads and another warp's writes of shared memory.
//   RESNEST_EMU_SEED seeds the shuffles (default 0).
// - Shared memory (RESNEST_SHARED, RESNEST_DYNAMIC_SHARED) is allocated per block, exactly sized, and filled with
//   0xFF bytes (NaN for floating point, -1 for integers) before the block starts, so a read before a write shows.
// - Refused as a GPU refuses them, with the launch error: blocks over 1024 threads (or a dimension over its
//   limit), grid y or z over 65535, shared memory over 48 KiB.
// - Failing loudly, naming the source lines: a __syncthreads reached at different places by different threads or
//   after some threads exited, a warp intrinsic whose mask names an exited lane or lanes waiting elsewhere, and
//   deadlock (no thread can run and no barrier can complete).
// Under AddressSanitizer the fiber switches are announced to it, so it follows the stacks and checks every global
// and shared-memory access.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <tuple>
#include <utility>
#include <vector>

#include "runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#define RESNEST_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RESNEST_EMU_ASAN 1
#endif
#endif

#if defined(RESNEST_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace resnest_emu {

enum class Schedule { forward, reverse, shuffle, warps_forward, warps_reverse, warps_shuffle };

inline Schedule schedule_from_env() {
  const char* v = std::getenv("RESNEST_EMU_SCHEDULE");
  const std::string s = v == nullptr ? "" : v;
  if (s.empty() || s == "forward") return Schedule::forward;
  if (s == "reverse") return Schedule::reverse;
  if (s == "shuffle") return Schedule::shuffle;
  if (s == "warps-forward") return Schedule::warps_forward;
  if (s == "warps-reverse") return Schedule::warps_reverse;
  if (s == "warps-shuffle") return Schedule::warps_shuffle;
  TORCH_CHECK(false, "RESNEST_EMU_SCHEDULE must be one of forward, reverse, shuffle, warps-forward, warps-reverse, ",
              "warps-shuffle; got '", s, "'");
}

// Where a thread waits: the barrier kind and its source line.
struct Site {
  const char* what = "";
  const char* file = "";
  int line = 0;
  bool operator==(const Site& o) const { return line == o.line && std::strcmp(file, o.file) == 0; }
  // "what at csrc/dir/file.cu:line" (the path from the source tree's csrc/ on).
  std::string str() const {
    const char* shown = std::strstr(file, "csrc/");
    std::ostringstream os;
    os << what << " at " << (shown != nullptr ? shown : file) << ":" << line;
    return os.str();
  }
};

enum class State { runnable, block_barrier, warp_barrier, exited };

struct Fiber {
  ucontext_t context;
  char* stack = nullptr;
  uint3 index{0, 0, 0};
  State state = State::runnable;
  Site site;
  unsigned int mask = 0;       // warp barrier: the lanes it waits for
  int source = -1;             // shuffle: the lane whose value it receives (-1: a plain __syncwarp)
  uint64_t value = 0;          // shuffle: the value it offers
  uint64_t result = 0;         // shuffle: the value it receives
  void* fake_stack = nullptr;  // AddressSanitizer's bookkeeping of this stack
};

// The state of the running launch (launches are serialised by Emulator::mutex).
class Emulator {
 public:
  static Emulator& get() {
    static Emulator e;
    return e;
  }

  std::mutex mutex;

  // Runs `body` (the kernel with its arguments bound) once for every thread of the grid. Returns the launch error
  // of a configuration a GPU refuses, without running anything; throws c10::Error for a fault found while running.
  cudaError_t launch(dim3 grid, dim3 block, size_t dynamic_smem, const std::function<void()>& body) {
    std::string why;
    const cudaError_t e = check_config(grid, block, dynamic_smem, &why);
    if (e != cudaSuccess) {
      last_error = {e, why};
      return e;
    }
    schedule_ = schedule_from_env();
    rng_.seed(static_cast<uint64_t>(env_int("RESNEST_EMU_SEED", 0)));
    body_ = &body;
    grid_ = grid;
    block_ = block;
    dynamic_bytes_ = dynamic_smem;
    const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
    const unsigned int threads = block.x * block.y * block.z;
    ensure_fibers(threads);
    for (uint64_t i : order(blocks)) {
      blockIdx = uint3{static_cast<unsigned int>(i % grid.x), static_cast<unsigned int>((i / grid.x) % grid.y),
                       static_cast<unsigned int>(i / (uint64_t(grid.x) * grid.y))};
      run_block(threads);
    }
    release_shared();
    return cudaSuccess;
  }

  // --- called from the threads of a block ---------------------------------------------------------------------
  void syncthreads(Site site) {
    Fiber& f = *current_;
    f.state = State::block_barrier;
    f.site = site;
    yield();
  }

  // A warp barrier over `mask`; `source` >= 0 makes it a shuffle that offers `value` and receives lane source's.
  uint64_t warp_barrier(Site site, unsigned int mask, int source, uint64_t value) {
    Fiber& f = *current_;
    const int lane = lane_of(f);
    if (((mask >> lane) & 1u) == 0) {
      fail(site.str() + ": the mask " + hex(mask) + " does not name the calling lane " + std::to_string(lane) +
           " (thread " + std::to_string(linear(f)) + ")");
    }
    f.state = State::warp_barrier;
    f.site = site;
    f.mask = mask;
    f.source = source;
    f.value = value;
    yield();
    return f.result;
  }

  int lane() const { return lane_of(*current_); }

  // Shared memory of the running block: the storage of the RESNEST_SHARED declaration at `site` (allocated by
  // the first thread to reach it, poisoned), or the launch's dynamic shared memory.
  void* block_shared(const char* file, int line, size_t bytes) {
    for (Allocation& a : shared_) {
      if (a.line == line && std::strcmp(a.file, file) == 0) return a.data;
    }
    size_t used = dynamic_bytes_ + bytes;
    for (const Allocation& a : shared_) used += a.bytes;
    if (used > kMaxSharedPerBlock) {
      fail(Site{"shared memory", file, line}.str() + ": over the limit: " +
           std::to_string(used) + " bytes per block (static + dynamic) > " + std::to_string(kMaxSharedPerBlock));
    }
    shared_.push_back({file, line, bytes, poisoned(bytes)});
    return shared_.back().data;
  }

  void* dynamic_shared() { return dynamic_; }

 private:
  struct Allocation {
    const char* file;
    int line;
    size_t bytes;
    void* data;
  };

  std::vector<Fiber> fibers_;
  size_t stack_bytes_ = 0;
  ucontext_t main_{};
  Fiber* current_ = nullptr;
  const std::function<void()>* body_ = nullptr;
  std::string error_;
  Schedule schedule_ = Schedule::forward;
  std::mt19937_64 rng_;
  dim3 grid_, block_;
  size_t dynamic_bytes_ = 0;
  void* dynamic_ = nullptr;
  std::vector<Allocation> shared_;
  const void* main_stack_bottom_ = nullptr;
  size_t main_stack_size_ = 0;
  void* main_fake_stack_ = nullptr;

  static std::string hex(unsigned int v) {
    std::ostringstream os;
    os << "0x" << std::hex << v;
    return os.str();
  }

  static cudaError_t check_config(dim3 grid, dim3 block, size_t smem, std::string* why) {
    const unsigned int b[3] = {block.x, block.y, block.z}, g[3] = {grid.x, grid.y, grid.z};
    const char* axis = "xyz";
    std::ostringstream os;
    for (int i = 0; i < 3; ++i) {
      if (b[i] == 0 || b[i] > kMaxBlockDim[i]) {
        os << "block." << axis[i] << " = " << b[i] << " (1 to " << kMaxBlockDim[i] << ")";
      } else if (g[i] == 0 || g[i] > kMaxGridDim[i]) {
        os << "grid." << axis[i] << " = " << g[i] << " (1 to " << kMaxGridDim[i] << ")";
      }
    }
    if (os.str().empty() && uint64_t(block.x) * block.y * block.z > kMaxThreadsPerBlock) {
      os << "a block of " << uint64_t(block.x) * block.y * block.z << " threads (at most " << kMaxThreadsPerBlock
         << ")";
    }
    if (!os.str().empty()) {
      *why = os.str();
      return cudaErrorInvalidConfiguration;
    }
    if (smem > kMaxSharedPerBlock) {
      *why = std::to_string(smem) + " bytes of dynamic shared memory (at most " + std::to_string(kMaxSharedPerBlock) +
             ")";
      return cudaErrorInvalidValue;
    }
    return cudaSuccess;
  }

  static void* poisoned(size_t bytes) {
    void* p = std::aligned_alloc(16, (std::max<size_t>(bytes, 1) + 15) / 16 * 16);
    TORCH_CHECK(p != nullptr, "emulated CUDA: out of memory for ", bytes, " bytes of shared memory");
    std::memset(p, 0xFF, std::max<size_t>(bytes, 1));
#if defined(RESNEST_EMU_ASAN)
    // Exactly `bytes` are addressable: an access past the declared size is reported.
    const size_t rounded = (std::max<size_t>(bytes, 1) + 15) / 16 * 16;
    ASAN_POISON_MEMORY_REGION(static_cast<char*>(p) + bytes, rounded - bytes);
#endif
    return p;
  }

  static void release(void* p, size_t bytes) {
#if defined(RESNEST_EMU_ASAN)
    ASAN_UNPOISON_MEMORY_REGION(p, (std::max<size_t>(bytes, 1) + 15) / 16 * 16);
#else
    (void)bytes;
#endif
    std::free(p);
  }

  void release_shared() {
    for (Allocation& a : shared_) release(a.data, a.bytes);
    shared_.clear();
    if (dynamic_ != nullptr) release(dynamic_, dynamic_bytes_);
    dynamic_ = nullptr;
  }

  int linear(const Fiber& f) const { return static_cast<int>(&f - fibers_.data()); }
  int lane_of(const Fiber& f) const { return linear(f) % warpSize; }

  // Fibers with stacks for `threads` threads (stacks are kept for later launches; a guard page under each).
#if defined(RESNEST_EMU_ASAN)
  static constexpr size_t kCleanTopBytes = 16 << 10;
#endif
  void ensure_fibers(unsigned int threads) {
#if defined(RESNEST_EMU_ASAN)
    const size_t bytes = 1 << 20;
#else
    const size_t bytes = 256 << 10;
#endif
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    if (fibers_.size() >= threads) return;
    const size_t old = fibers_.size();
    fibers_.resize(threads);  // moves the fibers; their contexts are made anew for every block
    for (size_t i = old; i < threads; ++i) {
      void* m = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
      TORCH_CHECK(m != MAP_FAILED, "emulated CUDA: cannot map a thread stack");
      mprotect(m, page, PROT_NONE);
      fibers_[i].stack = static_cast<char*>(m) + page;
    }
    stack_bytes_ = bytes;
  }

  static void entry() {
    Emulator& e = get();
#if defined(RESNEST_EMU_ASAN)
    __sanitizer_finish_switch_fiber(nullptr, &e.main_stack_bottom_, &e.main_stack_size_);
#endif
    (*e.body_)();
    Fiber& f = *e.current_;
    f.state = State::exited;
#if defined(RESNEST_EMU_ASAN)
    __sanitizer_start_switch_fiber(nullptr, e.main_stack_bottom_, e.main_stack_size_);  // this stack is done
#endif
    setcontext(&e.main_);
  }

  // From a thread to the scheduler.
  void yield() {
    Fiber& f = *current_;
#if defined(RESNEST_EMU_ASAN)
    __sanitizer_start_switch_fiber(&f.fake_stack, main_stack_bottom_, main_stack_size_);
#endif
    swapcontext(&f.context, &main_);
#if defined(RESNEST_EMU_ASAN)
    __sanitizer_finish_switch_fiber(f.fake_stack, &main_stack_bottom_, &main_stack_size_);
#endif
  }

  // From the scheduler to thread f, until it waits or exits.
  void resume(Fiber& f) {
    current_ = &f;
    threadIdx = f.index;
#if defined(RESNEST_EMU_ASAN)
    __sanitizer_start_switch_fiber(&main_fake_stack_, f.stack, stack_bytes_);
#endif
    swapcontext(&main_, &f.context);
#if defined(RESNEST_EMU_ASAN)
    __sanitizer_finish_switch_fiber(main_fake_stack_, nullptr, nullptr);
#endif
    current_ = nullptr;
    if (!error_.empty()) {
      std::string message;
      std::swap(message, error_);
      release_shared();
      TORCH_CHECK(false, "emulated CUDA: ", message);
    }
  }

  // A fault found inside a thread: it stops there and the launch throws.
  [[noreturn]] void fail(const std::string& message) {
    error_ = message.empty() ? "error" : message;
    Fiber& f = *current_;
    f.state = State::exited;
    yield();
    std::abort();  // never resumed
  }

  std::vector<uint64_t> order(uint64_t n) {
    std::vector<uint64_t> o(n);
    std::iota(o.begin(), o.end(), uint64_t(0));
    switch (schedule_) {
      case Schedule::reverse:
      case Schedule::warps_reverse: std::reverse(o.begin(), o.end()); break;
      case Schedule::shuffle:
      case Schedule::warps_shuffle: std::shuffle(o.begin(), o.end(), rng_); break;
      default: break;
    }
    return o;
  }

  bool warp_serial() const {
    return schedule_ == Schedule::warps_forward || schedule_ == Schedule::warps_reverse ||
           schedule_ == Schedule::warps_shuffle;
  }

  void run_block(unsigned int threads) {
    for (Allocation& a : shared_) release(a.data, a.bytes);
    shared_.clear();
    if (dynamic_ != nullptr) release(dynamic_, dynamic_bytes_);
    dynamic_ = dynamic_bytes_ > 0 ? poisoned(dynamic_bytes_) : nullptr;
    for (unsigned int t = 0; t < threads; ++t) {
      Fiber& f = fibers_[t];
      f.index = uint3{t % block_.x, (t / block_.x) % block_.y, t / (block_.x * block_.y)};
#if defined(RESNEST_EMU_ASAN)
      // Frames left poisoned by the previous block: only entry()'s (at the top of the stack) when the thread ran to
      // its end, any depth when the block was abandoned (a launch error). Unpoisoning whole stacks for every block
      // would cost more than the kernels.
      const size_t dirty = f.state == State::exited ? std::min(stack_bytes_, kCleanTopBytes) : stack_bytes_;
      ASAN_UNPOISON_MEMORY_REGION(f.stack + stack_bytes_ - dirty, dirty);
#endif
      f.state = State::runnable;
      f.fake_stack = nullptr;
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack;
      f.context.uc_stack.ss_size = stack_bytes_;
      f.context.uc_link = nullptr;
      makecontext(&f.context, &Emulator::entry, 0);
#if defined(RESNEST_EMU_ASAN)
      // AddressSanitizer's swapcontext clears the shadow of the whole stack named here at every switch (an mmap per
      // switch); the stack is only informational once the context is made, and its shadow was cleaned above.
      f.context.uc_stack.ss_size = 0;
#endif
    }
    blockDim = block_;
    gridDim = grid_;
    const unsigned int warps = (threads + warpSize - 1) / warpSize;
    for (;;) {
      if (warp_serial()) {
        for (uint64_t w : order(warps)) {
          do {
            for (uint64_t l : order(warpSize)) {
              const uint64_t t = w * warpSize + l;
              if (t < threads && fibers_[t].state == State::runnable) resume(fibers_[t]);
            }
          } while (release_warp(static_cast<unsigned int>(w), threads));
        }
      } else {
        for (uint64_t t : order(threads)) {
          if (fibers_[t].state == State::runnable) resume(fibers_[t]);
        }
        bool released = false;
        for (unsigned int w = 0; w < warps; ++w) released = release_warp(w, threads) || released;
        if (released) continue;
      }
      bool all_exited = true;
      for (unsigned int t = 0; t < threads; ++t) all_exited = all_exited && fibers_[t].state == State::exited;
      if (all_exited) return;
      if (!release_block(threads)) fail_block(threads, "deadlock: no thread can run and no barrier can complete");
    }
  }

  // Completes the warp barriers of warp w whose lanes have all arrived; true when one did.
  bool release_warp(unsigned int w, unsigned int threads) {
    bool released = false;
    for (unsigned int l = 0; l < static_cast<unsigned int>(warpSize); ++l) {
      const unsigned int t = w * warpSize + l;
      if (t >= threads || fibers_[t].state != State::warp_barrier) continue;
      const Fiber& f = fibers_[t];
      bool complete = true;
      for (unsigned int m = 0; m < static_cast<unsigned int>(warpSize); ++m) {
        if (((f.mask >> m) & 1u) == 0) continue;
        const unsigned int o = w * warpSize + m;
        if (o >= threads || fibers_[o].state == State::exited) {
          fail_block(threads, f.site.str() + " (thread " + std::to_string(t) + "): its mask " + hex(f.mask) +
                                  " names lane " + std::to_string(m) +
                                  (o >= threads ? ", which is not in the block" : ", which has exited"));
        }
        const Fiber& g = fibers_[o];
        if (g.state == State::warp_barrier && (!(g.site == f.site) || g.mask != f.mask)) {
          fail_block(threads, "warp lanes wait at different places or with different masks: lane " +
                                  std::to_string(l) + " at " + f.site.str() + " mask " + hex(f.mask) + ", lane " +
                                  std::to_string(m) + " at " + g.site.str() + " mask " + hex(g.mask));
        }
        if (g.state != State::warp_barrier) complete = false;
      }
      if (!complete) continue;
      const unsigned int mask = f.mask;
      for (unsigned int m = 0; m < static_cast<unsigned int>(warpSize); ++m) {
        if (((mask >> m) & 1u) == 0) continue;
        Fiber& g = fibers_[w * warpSize + m];
        if (g.source >= 0) {
          // A source lane outside the mask gives an undefined value on a GPU: poison.
          g.result = ((mask >> g.source) & 1u) ? fibers_[w * warpSize + g.source].value : ~uint64_t(0);
        }
        g.state = State::runnable;
      }
      released = true;
    }
    return released;
  }

  // Completes a __syncthreads that every thread reached at one place; false while some wait elsewhere.
  bool release_block(unsigned int threads) {
    const Fiber* first = nullptr;
    bool any_exited = false;
    for (unsigned int t = 0; t < threads; ++t) {
      const Fiber& f = fibers_[t];
      if (f.state == State::warp_barrier || f.state == State::runnable) return false;
      if (f.state == State::exited) any_exited = true;
      if (f.state == State::block_barrier) {
        if (first == nullptr) {
          first = &f;
        } else if (!(f.site == first->site)) {
          fail_block(threads, "__syncthreads reached at different places by the threads of one block");
        }
      }
    }
    if (first == nullptr) return false;
    if (any_exited) fail_block(threads, first->site.str() + " reached after some threads of the block exited");
    for (unsigned int t = 0; t < threads; ++t) fibers_[t].state = State::runnable;
    return true;
  }

  // Throws `message` with where every thread of the block stands.
  [[noreturn]] void fail_block(unsigned int threads, const std::string& message) {
    std::ostringstream os;
    os << "emulated CUDA: " << message << "; block (" << blockIdx.x << ", " << blockIdx.y << ", " << blockIdx.z
       << ") of grid (" << grid_.x << ", " << grid_.y << ", " << grid_.z << "), block size (" << block_.x << ", "
       << block_.y << ", " << block_.z << "):";
    unsigned int t = 0;
    while (t < threads) {
      const std::string where = describe(fibers_[t]);
      unsigned int end = t + 1;
      while (end < threads && describe(fibers_[end]) == where) ++end;
      os << "\n  threads " << t << "-" << end - 1 << ": " << where;
      t = end;
    }
    release_shared();
    TORCH_CHECK(false, os.str());
  }

  std::string describe(const Fiber& f) const {
    switch (f.state) {
      case State::runnable: return "runnable";
      case State::exited: return "exited";
      case State::block_barrier: return "waiting at " + f.site.str();
      case State::warp_barrier: return "waiting at " + f.site.str() + " mask " + hex(f.mask);
    }
    return "";
  }
};

// --- the launch ---------------------------------------------------------------------------------------------------
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Args&&... args) {
  Emulator& e = Emulator::get();
  const std::lock_guard<std::mutex> lock(e.mutex);
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  const std::function<void()> body = [&]() { std::apply(kernel, params); };
  return e.launch(grid, block, smem, body);
}

template <typename T>
T* block_shared(size_t count, const char* file, int line) {
  return static_cast<T*>(Emulator::get().block_shared(file, line, count * sizeof(T)));
}

template <typename T>
T* dynamic_shared() {
  return static_cast<T*>(Emulator::get().dynamic_shared());
}

struct DeviceGuard {
  template <typename Device>
  explicit DeviceGuard(const Device&) {}
};

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>, "shuffle of a value over 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

}  // namespace resnest_emu

// --- barriers and warp intrinsics, as CUDA names them; each records the source line it is called from -----------
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  resnest_emu::Emulator::get().syncthreads({"__syncthreads", file, line});
}

inline void __syncwarp(unsigned int mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  resnest_emu::Emulator::get().warp_barrier({"__syncwarp", file, line}, mask, -1, 0);
}

namespace resnest_emu {
// The lane a shuffle reads for the calling lane: `target` within the caller's segment of `width` lanes, or the
// caller itself when the target falls outside the segment.
template <typename T>
T shuffle(const char* what, const char* file, int line, unsigned int mask, T v, int width,
          int (*target)(int lane, int segment, int width, int arg), int arg) {
  Emulator& e = Emulator::get();
  const int lane = e.lane();
  const int segment = lane / width * width;
  const int t = target(lane, segment, width, arg);
  const int source = t >= segment && t < segment + width ? t : lane;
  return from_bits<T>(e.warp_barrier({what, file, line}, mask, source, to_bits(v)));
}
}  // namespace resnest_emu

template <typename T>
T __shfl_sync(unsigned int mask, T v, int src, int width = warpSize, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  return resnest_emu::shuffle<T>("__shfl_sync", file, line, mask, v, width,
                                 [](int, int segment, int w, int s) { return segment + ((s % w) + w) % w; }, src);
}

template <typename T>
T __shfl_down_sync(unsigned int mask, T v, unsigned int delta, int width = warpSize,
                   const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return resnest_emu::shuffle<T>("__shfl_down_sync", file, line, mask, v, width,
                                 [](int lane, int, int, int d) { return lane + d; }, static_cast<int>(delta));
}

template <typename T>
T __shfl_up_sync(unsigned int mask, T v, unsigned int delta, int width = warpSize,
                 const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return resnest_emu::shuffle<T>("__shfl_up_sync", file, line, mask, v, width,
                                 [](int lane, int, int, int d) { return lane - d; }, static_cast<int>(delta));
}

template <typename T>
T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = warpSize, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  return resnest_emu::shuffle<T>("__shfl_xor_sync", file, line, mask, v, width,
                                 [](int lane, int, int, int m) { return lane ^ m; }, lane_mask);
}
