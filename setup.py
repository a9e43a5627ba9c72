"""Build resnest_cuda._C: C++ kernels always, CUDA kernels when nvcc and a CUDA build of torch are present.

Set FORCE_CUDA=1 to build the CUDA sources even when no GPU is visible at build time (the CUDA build of torch
and nvcc must still be installed).
"""

import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def build_cuda():
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def get_extensions():
    cpp_sources = sorted(
        p for p in glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True)
    )
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    cxx_flags = ["-O3"]
    if build_cuda():
        nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        return [
            CUDAExtension(
                "resnest_cuda._C",
                cpp_sources + cuda_sources,
                define_macros=[("WITH_CUDA", None)],
                extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            )
        ]
    return [CppExtension("resnest_cuda._C", cpp_sources, extra_compile_args={"cxx": cxx_flags})]


setup(
    name="resnest-cuda",
    version="0.1.0",
    description="Fused split-attention kernels, ResNeSt backbones and a lean two-stage detection stack",
    packages=find_packages(include=["resnest_cuda*", "detection*"]),
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
    zip_safe=False,
)
