"""Tests marked `emulated` (the "emu" device of tests.helpers.devices()) run the resnest_cuda ops' CUDA kernels in
the emulator: their CPU calls go to torch.ops.resnest_emu for the duration of the test.

Unless RESNEST_EMU_SCHEDULE is set, they run under the warp-serial shuffled schedule (one warp runs ahead to the
next __syncthreads, threads and blocks in shuffled orders), seeded by the test's id so that a failure repeats."""

import os
import zlib

import pytest


@pytest.fixture(autouse=True)
def _emulated_cuda_kernels(request):
    if request.node.get_closest_marker("emulated") is None:
        yield
        return
    from resnest_cuda import emulation

    if "RESNEST_EMU_SCHEDULE" in os.environ:
        schedule = emulation.settings()
    else:
        schedule = emulation.settings(schedule="warps-shuffle", seed=zlib.crc32(request.node.nodeid.encode()))
    with emulation.kernels(), schedule:
        yield
