"""Timing helpers shared by the benchmarks: CUDA events on a GPU, perf_counter on the CPU."""

import json
import platform
import time

import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device, warmup=5, iters=20):
    """Median milliseconds per call of `fn` over `iters` timed calls (after `warmup` calls)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    if torch.device(device).type == "cuda":
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth_gbs(device, nbytes=256 * 2**20, iters=20):
    """Device-to-device copy bandwidth (bytes read + written per second, in GB/s) measured now."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, iters=iters)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def environment(device):
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if torch.device(device).type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
    }
    if torch.device(device).type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def save_json(path, payload):
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {path}")
