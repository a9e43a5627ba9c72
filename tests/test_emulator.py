"""The CUDA emulator itself (csrc/emulation/), through its test kernels (csrc/emulation/selftest.cu): shuffles
exchange the right values, the schedules run threads in the orders they promise, shared memory is poisoned for
every block, and every fault and launch configuration a GPU refuses is refused, naming the source line."""

import math
import os
import subprocess
import sys

import pytest
import torch

from resnest_cuda import emulation

pytestmark = pytest.mark.skipif(not emulation.available(), reason="the emulated-CUDA build (_C_emu) is not built")


def selftest(case: str, threads: int, blocks: int = 1) -> torch.Tensor:
    emulation.load()
    return torch.ops.resnest_emu._emu_selftest(case, threads, blocks)


def test_shuffles_exchange_values_as_cuda_defines_them():
    out = selftest("shuffle", 64).view(-1)[: 4 * 64].view(4, 64)
    lanes = torch.arange(64) % 32
    warp = torch.arange(64) // 32 * 32
    down = torch.where(lanes + 1 < 32, lanes + 1, lanes) + warp  # past the warp: the lane's own value
    up = torch.where(lanes >= 2, lanes - 2, lanes) + warp
    xor = (lanes ^ 5) + warp
    idx = lanes // 16 * 16 + 7 + warp  # width 16: lane 7 of each 16-lane segment
    assert torch.equal(out[0], down.double())
    assert torch.equal(out[1], up.double())
    assert torch.equal(out[2], xor.double())
    assert torch.equal(out[3], idx.double())


def tickets(schedule: str, threads: int = 64, blocks: int = 2) -> torch.Tensor:
    with emulation.settings(schedule=schedule, seed=3):
        out = selftest("order", threads, blocks)
    return out[: 3 * threads * blocks].view(3, blocks, threads).long()


def test_round_robin_schedules_run_every_thread_to_each_barrier_in_order():
    t = tickets("forward")
    n = 64
    # Block 0 first; its threads in order to the __syncwarp, then past it to the __syncthreads, then on.
    assert torch.equal(t[0, 0], torch.arange(n))
    assert torch.equal(t[1, 0], torch.arange(n) + n)
    assert torch.equal(t[2, 0], torch.arange(n) + 2 * n)
    assert torch.equal(t[0, 1], torch.arange(n) + 3 * n)
    r = tickets("reverse")
    assert torch.equal(r[0, 1], torch.arange(n).flip(0))  # the last block first, its last thread first
    s = tickets("shuffle")
    assert not torch.equal(s[0, 0], torch.arange(n)) and not torch.equal(s[0, 0], t[0, 1] - 3 * n)
    assert sorted(s[0].flatten().tolist()) == sorted(t[0].flatten().tolist())  # a permutation of the same work


def test_warp_serial_schedules_run_one_warp_ahead_to_the_syncthreads():
    t = tickets("warps-forward")
    # Warp 0 takes its tickets before and after its __syncwarp before warp 1 starts.
    assert torch.equal(t[0, 0, :32], torch.arange(32))
    assert torch.equal(t[1, 0, :32], torch.arange(32) + 32)
    assert torch.equal(t[0, 0, 32:], torch.arange(32) + 64)
    r = tickets("warps-reverse")
    assert r[0, 1, 32:].max() < r[0, 1, :32].min()  # the last warp of the last block runs first
    s = tickets("warps-shuffle")
    first = s[0, 0].argsort()[:32]  # the 32 threads that ran first are one warp
    assert len(set((first // 32).tolist())) == 1


def test_shuffle_seeds_give_different_orders_and_a_seed_repeats():
    a, b = tickets("warps-shuffle"), tickets("warps-shuffle")
    assert torch.equal(a, b)
    with emulation.settings(schedule="warps-shuffle", seed=4):
        c = selftest("order", 64, 2)[: 3 * 128].view(3, 2, 64).long()
    assert not torch.equal(a, c)


def test_shared_memory_is_poisoned_for_every_block():
    out = selftest("poison", 64, 3)
    # Static and dynamic shared memory read before any write: NaN in every block, although earlier blocks wrote.
    assert out[: 2 * 64 * 3].isnan().all()


@pytest.mark.parametrize(
    "case, expected",
    [
        (
            "divergent_syncthreads",
            r"__syncthreads reached at different places(.|\n)*selftest.cu:5\d(.|\n)*selftest.cu:5\d",
        ),
        ("exit_before_syncthreads", r"__syncthreads at csrc/emulation/selftest.cu:\d+ reached after some threads"),
        ("exited_lane", r"__shfl_down_sync at csrc/emulation/selftest.cu:\d+ .*names lane 3, which has exited"),
        ("deadlock", r"deadlock(.|\n)*threads 0-0: waiting at __syncwarp at csrc/emulation/selftest.cu:\d+"),
        ("warp_divergence", r"warp lanes wait at different places"),
        ("foreign_mask", r"the mask 0x1 does not name the calling lane 1"),
        ("big_shared", r"shared memory at csrc/emulation/selftest.cu:\d+: over the limit: 51200 bytes"),
    ],
)
def test_faults_fail_loudly_naming_the_source_line(case, expected):
    with pytest.raises(RuntimeError, match=expected):
        selftest(case, 64)
    assert selftest("plain", 64)[0] == 1  # the emulator is usable again after a fault


@pytest.mark.parametrize(
    "case, threads, blocks, expected",
    [
        ("plain", 1025, 1, r"invalid configuration argument.*block.x = 1025"),
        ("plain", 32, 0, r"invalid configuration argument.*grid.x = 0"),
        ("grid_y", 32, 65536, r"invalid configuration argument.*grid.y = 65536"),
        ("dynamic_shared", 32, 48 * 1024 + 1, r"invalid argument.*49153 bytes of dynamic shared memory"),
    ],
)
def test_launches_a_gpu_refuses_are_refused_with_the_launch_error(case, threads, blocks, expected):
    with pytest.raises(RuntimeError, match=r"CUDA error: " + expected):
        selftest(case, threads, blocks)
    selftest("grid_y", 32, 65535)  # the largest grid y a GPU takes runs
    selftest("dynamic_shared", 32, 48 * 1024)


def test_settings_reach_the_launchers():
    with emulation.settings(max_blocks=3, sm_count=77):
        assert selftest("grid_cap", 65535)[0] == 3
        assert selftest("sm_count", 1)[0] == 77
    assert selftest("grid_cap", 65535)[0] == 65535
    assert selftest("sm_count", 1)[0] == 4
    with pytest.raises(ValueError, match="schedule must be one of"):
        with emulation.settings(schedule="sideways"):
            pass
    os.environ["RESNEST_EMU_SCHEDULE"] = "sideways"
    try:
        with pytest.raises(RuntimeError, match="RESNEST_EMU_SCHEDULE must be one of"):
            selftest("plain", 32)
    finally:
        del os.environ["RESNEST_EMU_SCHEDULE"]
    assert not math.isnan(selftest("plain", 32)[0])


ADDRESS_SANITIZER = "libasan" in os.environ.get("LD_PRELOAD", "") and "RESNEST_EMU_LIBRARY" in os.environ


@pytest.mark.skipif(not ADDRESS_SANITIZER, reason="runs against the AddressSanitizer build (.ci/asan.sh)")
@pytest.mark.parametrize("case", ["global_overflow", "shared_overflow"])
def test_the_address_sanitizer_build_reports_out_of_bounds_accesses(case):
    """The AddressSanitizer run can fail: a kernel that writes one element past a tensor or a shared array ends
    the process with the sanitizer's report naming the kernel's source line."""
    code = (
        "import torch; from resnest_cuda import emulation; emulation.load(); "
        f"torch.ops.resnest_emu._emu_selftest({case!r}, 32, 1)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "ERROR: AddressSanitizer" in proc.stderr and "overflow" in proc.stderr, proc.stderr[-2000:]
    assert "selftest.cu" in proc.stderr, proc.stderr[-2000:]
