"""Training and inference throughput (images/s) and peak memory of ResNeSt backbones.

Compares our fused split-attention path, our plain-PyTorch reference path and timm's ResNeSt (when timm is
importable), each in NCHW and channels_last, under autocast (bf16 by default), optionally under torch.compile.
Inference is also measured after ``fuse_for_inference()`` (impl "fused+fold").

    python benchmarks/bench_backbone.py --out results.json                       # GPU: batch 64 at 224
    python benchmarks/bench_backbone.py --device cpu --batch 2 --size 64 --iters 2 --out /tmp/bench.json

Throughput is from the median iteration time. Peak memory is ``torch.cuda.max_memory_allocated`` over warmup and
timed iterations (null on CPU).
"""

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the repository root, for an in-place build
from common import environment, save_json, time_ms  # noqa: E402

import resnest_cuda  # noqa: E402

TIMM_NAMES = {
    "resnest14": "resnest14d",
    "resnest26": "resnest26d",
    "resnest50": "resnest50d",
    "resnest101": "resnest101e",
    "resnest200": "resnest200e",
    "resnest269": "resnest269e",
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass
class Result:
    model: str
    impl: str
    layout: str
    compiled: bool
    mode: str
    images_per_s: float | None = None
    ms_per_iter: float | None = None
    peak_mem_gb: float | None = None
    error: str | None = None


def build_model(name: str, impl: str) -> nn.Module:
    if impl == "timm":
        import timm

        return timm.create_model(TIMM_NAMES[name], pretrained=False)
    return getattr(resnest_cuda, name)(impl="fused" if impl == "fused+fold" else impl)


def _autocast(device: torch.device, dtype_name: str):
    dtype = DTYPES[dtype_name]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def run_case(args, device: torch.device, name: str, impl: str, layout: str, compiled: bool, mode: str) -> Result:
    result = Result(name, impl, layout, compiled, mode)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = build_model(name, impl).to(device=device, memory_format=memory_format)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=memory_format)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    if mode == "train":
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        forward = torch.compile(model) if compiled else model

        def step():
            with _autocast(device, args.dtype):
                loss = F.cross_entropy(forward(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    else:
        model.eval()
        if impl == "fused+fold":
            model.fuse_for_inference()
        forward = torch.compile(model) if compiled else model

        def step():
            with torch.inference_mode(), _autocast(device, args.dtype):
                forward(images)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    ms = time_ms(step, device, warmup=args.warmup, iters=args.iters)  # median per iteration
    result.images_per_s = args.batch / (ms * 1e-3)
    result.ms_per_iter = ms
    if device.type == "cuda":
        result.peak_mem_gb = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def _timm_available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def cases(args):
    impls = [i for i in args.impls.split(",") if i != "timm" or _timm_available()]
    for name in args.models.split(","):
        for impl in impls:
            if impl == "timm" and name not in TIMM_NAMES:
                continue
            for compiled in (False, True) if args.compile else (False,):
                for layout in args.layouts.split(","):
                    for mode in args.modes.split(","):
                        if impl == "fused+fold" and mode == "train":
                            continue
                        yield name, impl, layout, compiled, mode


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default="resnest50,resnest101", help="comma list of resnest14/26/50/101/200/269")
    p.add_argument("--impls", default="fused,reference,fused+fold,timm", help="fused, reference, fused+fold, timm")
    p.add_argument("--layouts", default="channels_last,nchw")
    p.add_argument("--modes", default="train,infer")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="autocast dtype (fp32: no autocast)")
    p.add_argument("--compile", action="store_true", help="also measure every case under torch.compile")
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    results = []
    print(f"{'model':<11} {'impl':<11} {'layout':<14} {'compile':<8} {'mode':<6} {'img/s':>9} {'peak GB':>8}")
    for name, impl, layout, compiled, mode in cases(args):
        try:
            result = run_case(args, device, name, impl, layout, compiled, mode)
        except Exception as exc:  # record and go on: one failing case (OOM, compile) must not hide the rest
            result = Result(name, impl, layout, compiled, mode, error=f"{type(exc).__name__}: {exc}"[:500])
        results.append(result)
        ips = f"{result.images_per_s:9.1f}" if result.images_per_s else "    error"
        mem = f"{result.peak_mem_gb:8.2f}" if result.peak_mem_gb is not None else "       -"
        print(f"{name:<11} {impl:<11} {layout:<14} {compiled!s:<8} {mode:<6} {ips} {mem}", flush=True)
        if result.error:
            print(f"    {result.error}")
    report = {"environment": environment(device), "args": vars(args), "results": [asdict(r) for r in results]}
    save_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
