"""Host synchronisations per detector training step, with the source line that caused each.

A CUDA training step is only as fast as its host round trips: every op whose output shape or value the host must
know drains the GPU queue. This script counts them per model, per training step (forward, backward, SGD step).

CPU mode (default without a GPU): a `TorchDispatchMode` records every op that forces a host synchronisation when
its inputs live on a CUDA device, while a CPU step runs. Counted (`SYNC_OPS`, `is_sync_op`):

- `aten.nonzero` (also behind `torch.where(cond)`, `argwhere`, `nonzero(as_tuple=True)`); `nonzero_static` is not
  counted (its output size is fixed);
- `aten._local_scalar_dense`: `.item()`, `float(t)`, `int(t)`, `bool(t)`, `math.isfinite(t)`, `if t:`, `range(t)`;
- `Tensor.tolist()` and `Tensor.numpy()` (no dispatcher op; counted by wrapping the two methods while counting);
- `aten.masked_select`, `aten.unique*` (`_unique`, `_unique2`, `unique_dim`, `unique_consecutive`),
  `aten.bincount`, `aten.equal`, `aten.repeat_interleave.Tensor` without `output_size`;
- boolean-mask indexing: `aten.index.Tensor` / `aten.index_put(_)` / `aten._index_put_impl_` with a bool or uint8
  index (the kernel turns the mask into indices with `nonzero`); the backward of `x[mask]` is such an
  `index_put` too. Not counted: `x[mask] = python_scalar`, which ATen runs as `masked_fill_` (a 0-dim value and
  a single mask index are taken to be that case);
- `resnest_cuda::nms` and `resnest_cuda::_batched_nms_per_class` (their output length depends on the data; the CUDA
  kernels end with a `nonzero`);
- `aten.lift_fresh` of at least one dimension ("host_data"): a tensor made from a Python list (`torch.tensor`,
  `new_tensor`, `as_tensor`). On CUDA that is a copy from pageable host memory: it does not drain the queue, but
  it cannot be captured in a CUDA graph, so a capturable step needs none either. 0-dim ones are not counted:
  `x[mask] = 1.0` makes one, which is passed by value, not copied (a blind spot for `new_tensor(1.0)`).

Not seen by the CPU mode: copies between host and device (`.to("cpu")`, `torch.tensor(..., device="cuda")`,
pageable `non_blocking` copies), `torch.cuda.synchronize`, and ops on tensors that are on the CPU anyway on a GPU
run. The CUDA mode sees those too.

CUDA mode (`--device cuda`): `torch.cuda.set_sync_debug_mode("warn")` over 5 steady-state steps (after 3 warm-up
steps); each warning is attributed to the innermost Python frame in detection/ or resnest_cuda/.

Backward ops are attributed to the forward line that created the autograd node (anomaly mode records it).

    python -m benchmarks.count_syncs                                 # CPU: the four models, S-14, 2 x 128x192
    python -m benchmarks.count_syncs --backbone resnest50 --size 256x320
    python -m benchmarks.count_syncs --device cuda --size 800x1216 --backbone resnest50
    python -m benchmarks.count_syncs --engine                        # also count Trainer._step (the loop's syncs)
"""

import argparse
import collections
import contextlib
import os
import sys
import traceback
import types
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from detection.build import build_model  # noqa: E402
from detection.configs import get_config  # noqa: E402

MODELS = {
    "faster": "faster_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco",
    "mask": "mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco",
    "cascade": "cascade_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco",
    "cascade_mask": "cascade_mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco",
}
_OUR_DIRS = (str(ROOT / "detection") + os.sep, str(ROOT / "resnest_cuda") + os.sep)

_aten = torch.ops.aten
SYNC_OPS = {
    _aten.nonzero.default: "nonzero",
    _aten._local_scalar_dense.default: "item",
    _aten.masked_select.default: "masked_select",
    _aten._unique.default: "unique",
    _aten._unique2.default: "unique",
    _aten.unique_dim.default: "unique",
    _aten.unique_consecutive.default: "unique",
    _aten.bincount.default: "bincount",
    _aten.equal.default: "equal",
}
_INDEX_OPS = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default, _aten._index_put_impl_.default}


def _has_mask_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _is_masked_fill(func, args, kwargs) -> bool:
    """`x[mask] = python_scalar`: ATen runs it as `masked_fill_` (one mask index, a 0-dim value, which Python
    indexing creates on the host, no accumulation), which needs no host synchronisation."""
    indices = args[1] if len(args) > 1 else kwargs.get("indices")
    value = args[2] if len(args) > 2 else kwargs.get("values")
    accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
    defined = [i for i in indices if i is not None]
    return not accumulate and len(defined) == 1 and indices[0] is not None and value.dim() == 0


# Ops whose output length depends on the data (batched_nms runs the second one outside torch.export).
_NMS_OPS = ("resnest_cuda::nms", "resnest_cuda::_batched_nms_per_class")


def is_sync_op(func, args, kwargs) -> str | None:
    """The kind of host synchronisation `func(*args, **kwargs)` forces on CUDA inputs, or None."""
    if func in SYNC_OPS:
        return SYNC_OPS[func]
    if func is _aten.lift_fresh.default and args[0].dim() > 0:
        return "host_data"
    if func in _INDEX_OPS and _has_mask_index(args[1] if len(args) > 1 else kwargs.get("indices")):
        if func is _aten.index.Tensor:
            return "bool_index"
        return None if _is_masked_fill(func, args, kwargs) else "bool_index_put"
    if func is _aten.repeat_interleave.Tensor and kwargs.get("output_size", args[1] if len(args) > 1 else None) is None:
        return "repeat_interleave"
    if func is _aten.repeat_interleave.self_Tensor:
        size = kwargs.get("output_size", args[3] if len(args) > 3 else None)
        return "repeat_interleave" if size is None else None
    if getattr(func, "_schema", None) is not None and func._schema.name in _NMS_OPS:
        return "nms"
    return None


def _our_frame(frames) -> str | None:
    """'path:line' of the innermost frame in detection/ or resnest_cuda/ (frames: outermost first)."""
    for frame in reversed(frames):
        filename, lineno = frame
        if filename.startswith(_OUR_DIRS):
            return f"{os.path.relpath(filename, ROOT)}:{lineno}"
    return None


def _forward_site_of_backward() -> str | None:
    """The forward line of the autograd node being run (recorded by anomaly mode), or None outside backward."""
    node = torch._C._current_autograd_node()
    if node is None:
        return None
    trace = node.metadata.get("traceback_") or []
    frames = []
    for entry in "".join(trace).splitlines():
        entry = entry.strip()
        if entry.startswith('File "'):
            name, _, rest = entry[6:].partition('", line ')
            frames.append((name, int(rest.split(",")[0])))
    site = _our_frame(frames)
    return f"backward of {site}" if site else f"backward ({node.name()})"


class SyncCounter(TorchDispatchMode):
    """Counts, while active, the ops that would synchronise the host with a CUDA device (see the module docstring).

    `sites` maps (kind, 'path:line') to a count; the line is the innermost frame in detection/ or resnest_cuda/
    (for backward ops: 'backward of <forward line>'), else the innermost frame outside torch."""

    def __init__(self):
        super().__init__()
        self.sites = collections.Counter()

    def record(self, kind: str) -> None:
        site = _forward_site_of_backward()
        if site is None:
            frames = [(f.filename, f.lineno) for f in traceback.extract_stack()[:-2]]
            site = _our_frame(frames)
            if site is None:
                outside = [f for f in frames if f"{os.sep}torch{os.sep}" not in f[0] and f[0] != __file__]
                site = f"{os.path.relpath(outside[-1][0], ROOT)}:{outside[-1][1]}" if outside else "?"
        self.sites[(kind, site)] += 1

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = is_sync_op(func, args, kwargs)
        if kind is not None:
            self.record(kind)
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.sites.values())


@contextlib.contextmanager
def count_syncs():
    """`with count_syncs() as counter:` counts the host synchronisations of the block (CPU tensors, see above)."""
    counter = SyncCounter()
    wrapped = {}

    def wrap(name):
        original = getattr(torch.Tensor, name)

        def method(self, *args, **kwargs):
            counter.record(name)
            return original(self, *args, **kwargs)

        wrapped[name] = torch.Tensor.__dict__.get(name)
        setattr(torch.Tensor, name, method)

    for name in ("tolist", "numpy"):
        wrap(name)
    try:
        with torch.autograd.set_detect_anomaly(True, check_nan=False), counter:
            yield counter
    finally:
        for name, original in wrapped.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)


def cuda_sync_sites(step, steps: int = 5) -> collections.Counter:
    """Run `step` `steps` times with CUDA sync debugging on; {(kind, 'path:line'): count} over all steps."""
    sites = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [(f.filename, f.lineno) for f in traceback.extract_stack()[:-1]]
        sites[("cuda_sync", _our_frame(frames) or f"{filename}:{lineno}")] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record  # restored when the block exits
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
    return sites


def build(model_key: str, backbone: str, device: str, static_shapes: bool = True):
    cfg = get_config(MODELS[model_key]).model
    cfg.backbone.name = backbone
    cfg.backbone.norm = "bn"  # no process group here; SyncBN would behave as BN anyway
    model = build_model(cfg).to(device).train()
    model.static_shapes = static_shapes  # the CUDA default (fixed-size tensors), also when counted on the CPU
    num_classes = cfg.roi_head.stages[0].box_head.num_classes
    return model, num_classes, cfg.roi_head.mask_head is not None


def model_step(model, optimizer, images, targets):
    """What a training step runs besides the loop: forward, loss sum, backward, SGD step."""
    loss = sum(model(images, targets).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def engine_step(model, optimizer, images, targets, device):
    """`detection.engine.train.Trainer._step` on a stand-in trainer (one process, no clipping, fp32)."""
    from detection.config import SolverConfig
    from detection.engine.step_stats import FiniteWatch
    from detection.engine.train import Trainer

    solver = SolverConfig(amp=False, grad_clip=None)
    trainer = types.SimpleNamespace(
        info=types.SimpleNamespace(device=torch.device(device)), cfg=types.SimpleNamespace(solver=solver),
        ddp_model=model, model=model, optimizer=optimizer, work_dir=str(ROOT), iteration=0,
        watch=FiniteWatch(torch.device(device)))
    Trainer._step(trainer, images, targets, 0, 0)


def measure(model_key: str, backbone: str, batch: int, size, device: str, steps: int, engine: bool,
            static_shapes: bool = True):
    from benchmarks.bench_detector import synthetic_batch

    torch.manual_seed(0)
    model, num_classes, with_masks = build(model_key, backbone, device, static_shapes)
    images, targets = synthetic_batch(batch, size, num_classes, with_masks, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    if engine:
        def step():
            engine_step(model, optimizer, images, targets, device)
    else:
        def step():
            model_step(model, optimizer, images, targets)
    if device.startswith("cuda"):
        for _ in range(3):
            step()
        return cuda_sync_sites(step, steps), steps
    step()  # warm-up: lazily built state (anchors) would otherwise count once
    with count_syncs() as counter:
        for _ in range(steps):
            step()
    return counter.sites, steps


def report(name: str, sites: collections.Counter, steps: int) -> dict:
    total = sum(sites.values()) / steps
    print(f"{name}: {total:g} host synchronisations per training step")
    by_site = collections.defaultdict(collections.Counter)
    for (kind, site), count in sites.items():
        by_site[site][kind] += count
    rows = sorted(by_site.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    for site, kinds in rows:
        per_step = sum(kinds.values()) / steps
        print(f"  {per_step:6g}  {site}  ({', '.join(f'{k} {v / steps:g}' for k, v in sorted(kinds.items()))})")
    return {"per_step": total, "sites": {site: {k: v / steps for k, v in kinds.items()} for site, kinds in rows}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--backbone", default="resnest14", help="resnest14 | resnest50 | ...")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", default="128x192", help="HxW of the synthetic images")
    parser.add_argument("--steps", type=int, default=0, help="counted steps (default: 1 on CPU, 5 on CUDA)")
    parser.add_argument("--engine", action="store_true", help="also count Trainer._step (adds the loop's syncs)")
    parser.add_argument("--compacted", action="store_true",
                        help="count the compacted step (GeneralizedRCNN.static_shapes=False, the CPU default) "
                             "instead of the fixed-size one (the CUDA default)")
    parser.add_argument("--out", default="", help="write the counts as JSON here")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    steps = args.steps or (5 if args.device.startswith("cuda") else 1)
    results = {}
    for key in args.models.split(","):
        if key not in MODELS:
            raise SystemExit(f"--models: unknown model {key!r}; expected some of {', '.join(MODELS)}")
        modes = (False, True) if args.engine else (False,)
        for engine in modes:
            name = f"{key} {args.backbone}{' compacted' if args.compacted else ''}{' Trainer._step' if engine else ''}"
            sites, n = measure(key, args.backbone, args.batch, size, args.device, steps, engine, not args.compacted)
            results[name] = report(name, sites, n)
    if args.out:
        import json

        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
