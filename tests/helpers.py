"""Shared test helpers: the devices kernels are tested on."""

import pytest
import torch

from resnest_cuda import emulation

CUDA = torch.cuda.is_available()
EMULATED = emulation.available()


def devices():
    """Devices the kernels are tested on: the CPU always; "emu" when the emulated-CUDA build is present (CPU
    tensors whose resnest_cuda ops run the CUDA kernels in the emulator: tests/conftest.py routes them while the
    test runs); CUDA when a GPU is present."""
    params = ["cpu"]
    if EMULATED:
        params.append(pytest.param("cpu", id="emu", marks=pytest.mark.emulated))
    if CUDA:
        params.append("cuda")
    return params


def is_emulated(request) -> bool:
    """True in a test running on the "emu" device of devices()."""
    return request.node.get_closest_marker("emulated") is not None


requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
