"""Loads the compiled operator library (resnest_cuda._C) with a helpful message when it is missing."""

import torch

try:
    from . import _C  # noqa: F401  (registers the resnest_cuda::* ops with the dispatcher)
except ImportError as exc:  # pragma: no cover - only hit on a broken install
    raise ImportError(
        "resnest_cuda._C is not built. Install the package with "
        "`pip install --no-build-isolation -e .` (or run `python setup.py build_ext --inplace`) "
        f"from the repository root. Original error: {exc}"
    ) from exc


def has_kernel(op_name: str, dispatch_key: str) -> bool:
    """True when resnest_cuda::<op_name> has a kernel for `dispatch_key` ("CPU" or "CUDA")."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"resnest_cuda::{op_name}", dispatch_key)


def refuse_functorch_transforms(op: str) -> None:
    """Raises a clear error under torch.func transforms (grad, vmap, jacrev, jvp, ...), which the registered ops do
    not support: their autograd formulas are registered with torch.library.register_autograd on C++ schemas, which
    torch.func cannot run, and they have no batching rules. Plain autograd (including create_graph=True),
    torch.compile and torch.export are supported."""
    if torch._C._are_functorch_transforms_active():
        raise RuntimeError(
            f"{op}: torch.func transforms (grad, vmap, jacrev, jvp, ...) are not supported by the resnest_cuda ops. "
            "Use torch.autograd.grad (create_graph=True gives exact higher derivatives), or the plain-PyTorch "
            "ops in resnest_cuda.reference (SplitAttentionConv2d(impl='reference')) inside torch.func."
        )
