"""Shared test helpers: the devices kernels are tested on."""

import pytest
import torch

CUDA = torch.cuda.is_available()


def devices():
    """Devices the kernels are tested on: CPU always, CUDA when a GPU is present."""
    return ["cpu", "cuda"] if CUDA else ["cpu"]


requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
