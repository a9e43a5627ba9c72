"""The CUDA kernels of the resnest_cuda ops, run on the CPU by the CUDA emulator (csrc/emulation/).

Build it with `RESNEST_EMULATE_CUDA=1 pip install --no-build-isolation -e .`: beside resnest_cuda._C this builds
resnest_cuda._C_emu, the same .cu sources compiled by the host compiler. `load()` registers their kernels as
`torch.ops.resnest_emu.<op>`, with the name and schema of `torch.ops.resnest_cuda.<op>`, taking CPU tensors.
`kernels()` routes the CPU calls of the resnest_cuda ops to them for a while, so that code and tests written for
the GPU (autograd, the Python wrappers, whole models) run the CUDA kernels on the CPU.

The emulator's settings are read at every launch from the environment:
  RESNEST_EMU_SCHEDULE   forward (default), reverse, shuffle, warps-forward, warps-reverse, warps-shuffle
  RESNEST_EMU_SEED       seed of the shuffled orders (default 0)
  RESNEST_EMU_SM_COUNT   SMs the device reports (default 4): launch sizing, the split of reductions
  RESNEST_EMU_MAX_BLOCKS caps every grid-stride grid, so the stride loops run more than once per thread
RESNEST_EMU_LIBRARY names another build of _C_emu to load (the AddressSanitizer build).

What it does not replace: the nvcc compile check, compute-sanitizer on a GPU (memory model, real atomics,
hardware scheduling) and every timing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
from collections.abc import Iterator

import torch

from . import _library  # noqa: F401  (loads resnest_cuda._C: the resnest_cuda schemas)

NAMESPACE = "resnest_emu"
SCHEDULES = ("forward", "reverse", "shuffle", "warps-forward", "warps-reverse", "warps-shuffle")

_schemas: torch.library.Library | None = None
_loaded = False


def _library_path() -> str | None:
    path = os.environ.get("RESNEST_EMU_LIBRARY")
    if path:
        return path
    found = glob.glob(os.path.join(os.path.dirname(__file__), "_C_emu*.so"))
    return found[0] if found else None


def available() -> bool:
    """True when the emulated build (resnest_cuda._C_emu) is present."""
    path = _library_path()
    return path is not None and os.path.exists(path)


def ops() -> list[str]:
    """Names of the resnest_cuda ops that have an emulated CUDA kernel (after load())."""
    load()
    names = []
    for qualified in torch._C._dispatch_get_all_op_names():
        if qualified.startswith(NAMESPACE + "::"):
            name = qualified.split("::", 1)[1]
            if torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CPU"):
                names.append(name)
    return sorted(set(names))


def load() -> None:
    """Loads _C_emu and defines torch.ops.resnest_emu.<op> for every resnest_cuda op it has a kernel for, with the
    resnest_cuda schema. Idempotent. Raises ImportError when the emulated build is missing."""
    global _schemas, _loaded
    if _loaded:
        return
    path = _library_path()
    if path is None or not os.path.exists(path):
        raise ImportError(
            "resnest_cuda._C_emu is not built: build it with "
            "`RESNEST_EMULATE_CUDA=1 pip install --no-build-isolation -e .` "
            f"(or set RESNEST_EMU_LIBRARY to a built library; got {path!r})"
        )
    # The kernels register (for the CPU key of resnest_emu::<op>) when the library loads; the schemas come from
    # resnest_cuda, the one place they are written.
    torch.ops.load_library(path)
    lib = torch.library.Library(NAMESPACE, "FRAGMENT")
    for qualified in torch._C._dispatch_get_all_op_names():
        if not qualified.startswith(NAMESPACE + "::"):
            continue
        name = qualified.split("::", 1)[1].split(".")[0]
        if name.startswith("_emu_"):
            continue  # the emulator's own test ops define their schemas in C++
        schema = str(getattr(torch.ops.resnest_cuda, name).default._schema)
        lib.define(re.sub(r"^resnest_cuda::", "", schema))
    _schemas = lib
    _loaded = True


@contextlib.contextmanager
def kernels() -> Iterator[None]:
    """While active, a resnest_cuda op called on CPU tensors runs its emulated CUDA kernel (resnest_emu::<op>)
    instead of its CPU kernel; autograd, fake tensors and the Python wrappers are unchanged."""
    load()
    lib = torch.library.Library("resnest_cuda", "IMPL")
    try:
        for name in ops():
            emulated = getattr(torch.ops.resnest_emu, name).default

            def kernel(*args, _op=emulated, **kwargs):
                return _op(*args, **kwargs)

            with _quiet_override():
                lib.impl(name, kernel, "CPU")
        yield
    finally:
        lib._destroy()


@contextlib.contextmanager
def _quiet_override() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        # The message starts with "Warning only once for all operators," and names the override on a later line.
        warnings.filterwarnings("ignore", message=r"(?s).*Overriding a previously registered kernel")
        yield


@contextlib.contextmanager
def settings(schedule: str | None = None, seed: int | None = None, sm_count: int | None = None,
             max_blocks: int | None = None) -> Iterator[None]:
    """Sets the emulator's environment settings for a while (None: leave as is)."""
    if schedule is not None and schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    values = {
        "RESNEST_EMU_SCHEDULE": schedule,
        "RESNEST_EMU_SEED": seed,
        "RESNEST_EMU_SM_COUNT": sm_count,
        "RESNEST_EMU_MAX_BLOCKS": max_blocks,
    }
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is not None:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
