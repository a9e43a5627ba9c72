"""Which GPU architectures setup.py compiles the CUDA kernels for.

torch's build tools read TORCH_CUDA_ARCH_LIST; when it is unset they ask the visible GPUs, and with none visible
(a Docker build, a CI runner) torch's detection fails with an IndexError. setup.py therefore sets
DEFAULT_ARCH_LIST when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset, and prints what it chose.
"""

# Ampere (A100: 8.0; A10, RTX 30xx: 8.6), Ada (L4, L40, RTX 40xx: 8.9), Hopper (H100, H200: 9.0) and PTX of 9.0,
# which the driver compiles for newer GPUs on first use.
DEFAULT_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"


def choose_arch_list(environ, visible_gpus: int) -> tuple[str | None, str]:
    """(the TORCH_CUDA_ARCH_LIST to set, or None to leave the environment alone; a line saying what the build
    compiles for)."""
    chosen = environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    prefix = "resnest-cuda: compiling the CUDA kernels for"
    if chosen:
        return None, f"{prefix} TORCH_CUDA_ARCH_LIST={chosen}"
    if visible_gpus > 0:
        return None, f"{prefix} the visible GPU(s) (set TORCH_CUDA_ARCH_LIST to choose)"
    return DEFAULT_ARCH_LIST, (f"{prefix} {DEFAULT_ARCH_LIST}: no GPU is visible and TORCH_CUDA_ARCH_LIST is unset "
                               "(set it to choose, e.g. TORCH_CUDA_ARCH_LIST=9.0)")
