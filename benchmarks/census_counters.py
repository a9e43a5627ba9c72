"""What one training step costs, counted on the CPU as a model of its GPU cost (torch only: imported both by
benchmarks/step_census.py in the project's environment and by benchmarks/step_census_peer.py in the peers' one).

Rules (the same for every framework):
- ops: every op that reaches the dispatcher (a TorchDispatchMode, forward and backward) and is not a view, about
  one kernel launch each. An op is a view when every output of its schema aliases an input without writing it
  (aten.view, _reshape_alias, t, expand, as_strided, detach, alias, slice, select, (un)squeeze, permute, transpose,
  split, unbind, ...) or is aten._unsafe_view; allocations that launch no kernel (aten.empty, empty_like,
  empty_strided, new_empty, new_empty_strided) do not count either. Custom ops (resnest_cuda::*, torchvision::*)
  count like aten ones.
- bytes moved: over the counted ops, the bytes of every tensor input read plus every tensor output written, about
  the HBM traffic of the kernels. A tensor's bytes are its distinct elements times the element size (a broadcast,
  stride-0 dimension counts once). An argument the op mutates (in-place ops, out= arguments, BatchNorm's running
  statistics) counts as written, and also as read except where the op only overwrites it (out= variants, copy_,
  fill_, zero_ and the random fills).
- GFLOPs: torch.utils.flop_counter.FlopCounterMode (convolutions and matrix products).
- saved for backward: the storages of the tensors autograd saves during the forward
  (torch.autograd.graph.saved_tensors_hooks), each storage once (by untyped_storage().data_ptr()) at its full
  size; the storages of the model's parameters and buffers are reported apart (saved_state_mb), not in saved_mb.
"""

import collections
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

ALLOCATIONS = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided"}
VIEWS_WITHOUT_ALIAS_INFO = {"aten::_unsafe_view"}
OVERWRITES = {
    "aten::copy_",
    "aten::fill_",
    "aten::zero_",
    "aten::normal_",
    "aten::uniform_",
    "aten::random_",
    "aten::bernoulli_",
    "aten::exponential_",
}


def is_view(func):
    """True when every output of `func` aliases an input without writing it (or for aten._unsafe_view)."""
    schema = func._schema
    if schema.name in VIEWS_WITHOUT_ALIAS_INFO:
        return True
    returns = schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def is_counted(func):
    """An op that counts as a kernel: not a view, not a bare allocation."""
    return func._schema.name not in ALLOCATIONS and not is_view(func)


def tensor_bytes(t):
    """Distinct elements addressed by `t` (stride-0 dimensions once) times its element size."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


def mutated_args(func, args, kwargs):
    """The tensor arguments that `func` writes: those its schema marks `a!`, and the running statistics that
    aten::native_batch_norm updates in training although its schema does not mark them."""
    if func._schema.name == "aten::native_batch_norm":
        training = args[5] if len(args) > 5 else kwargs.get("training")
        return tensors(list(args[3:5])) if training else []
    mutated = []
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            mutated += tensors(value)
    return mutated


def bytes_moved(func, args, kwargs, out):
    """Bytes read plus bytes written by one op (rules in the module docstring)."""
    schema = func._schema
    mutated = mutated_args(func, args, kwargs)
    outputs = tensors(out)
    only_writes = schema.name in OVERWRITES or schema.overload_name.startswith("out")
    skip_read = {id(t) for t in mutated} if only_writes else set()
    returned = {id(t) for t in outputs}
    read = sum(tensor_bytes(t) for t in tensors((args, kwargs)) if id(t) not in skip_read)
    written = sum(tensor_bytes(t) for t in outputs) + sum(tensor_bytes(t) for t in mutated if id(t) not in returned)
    return read + written


def tensors(tree):
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


class OpCensus(TorchDispatchMode):
    """Counts ops and bytes moved (rules in the module docstring), in total and per op name."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.bytes = 0
        self.per_op = collections.defaultdict(lambda: [0, 0])  # name -> [count, bytes]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if is_counted(func):
            moved = bytes_moved(func, args, kwargs, out)
            entry = self.per_op[func._schema.name]
            entry[0] += 1
            entry[1] += moved
            self.ops += 1
            self.bytes += moved
        return out


class SavedTensors:
    """saved_tensors_hooks that record each saved storage once; the storages are held until `close` so that an
    address is not reused by another storage during the count."""

    def __init__(self, state):
        self.state_ptrs = {t.untyped_storage().data_ptr() for t in state}
        self.storages = {}  # data_ptr -> storage

    def pack(self, t):
        storage = t.untyped_storage()
        self.storages.setdefault(storage.data_ptr(), storage)
        return t

    @staticmethod
    def unpack(t):
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    def totals(self):
        """(bytes of the saved storages that are not model state, bytes of the saved parameters and buffers)."""
        act = sum(s.nbytes() for ptr, s in self.storages.items() if ptr not in self.state_ptrs)
        state = sum(s.nbytes() for ptr, s in self.storages.items() if ptr in self.state_ptrs)
        return act, state

    def close(self):
        self.storages.clear()


def run_census(forward, model, top=8):
    """Count one training step of `model`: `forward()` returns the total loss (it runs under the saved-tensor
    hooks), then its backward. Returns a dict (saved storages of the model's parameters and buffers apart)."""
    ops = OpCensus()
    flops = FlopCounterMode(display=False)
    saved = SavedTensors([*model.parameters(), *model.buffers()])
    start = time.perf_counter()
    with flops, ops:  # ops innermost: it sees each op before FlopCounterMode (which may decompose some)
        with saved.hooks():
            loss = forward()
        loss.backward()
    seconds = time.perf_counter() - start
    act, state = saved.totals()
    saved.close()
    by_bytes = sorted(ops.per_op.items(), key=lambda kv: -kv[1][1])
    return {
        "ops": ops.ops,
        "gb_moved": ops.bytes / 1e9,
        "gflops": flops.get_total_flops() / 1e9,
        "saved_mb": act / 2**20,
        "saved_state_mb": state / 2**20,
        "loss": float(loss.detach()),
        "seconds": seconds,
        "top_ops": [{"op": name, "count": c, "gb": b / 1e9} for name, (c, b) in by_bytes[:top]],
        "all_ops": {name: {"count": c, "gb": b / 1e9} for name, (c, b) in by_bytes},
    }
