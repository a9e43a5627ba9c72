"""How the extension is built: its C++ kernels parallelise with the OpenMP runtime torch uses."""

import shutil
import subprocess
import sys

import pytest
import torch

import resnest_cuda


def test_cpu_kernels_are_built_with_openmp_where_torch_uses_it():
    """at::parallel_for's `#pragma omp parallel` is compiled into the extension: built without -fopenmp, every CPU
    kernel runs on one thread whatever torch.set_num_threads says. The built library must need libgomp (the one
    torch has loaded, same soname) wherever torch itself parallelises with OpenMP."""
    if not sys.platform.startswith("linux") or "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("torch does not use OpenMP here")
    if shutil.which("ldd") is None:
        pytest.skip("ldd is not available")
    needed = subprocess.run(["ldd", resnest_cuda._C.__file__], capture_output=True, text=True, check=True).stdout
    assert "libgomp" in needed, f"resnest_cuda._C was built without OpenMP:\n{needed}"
    loaded = [line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line]
    assert len(set(loaded)) == 1, f"more than one OpenMP runtime loaded: {sorted(set(loaded))}"
