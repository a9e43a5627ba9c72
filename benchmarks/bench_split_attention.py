"""Fused split attention vs the eager reference vs torch.compile(reference).

Shapes are the split-attention inputs of ResNeSt-50 (radix 2) for an 800x1216 detection batch of 2 and a 224
classification batch of 64. Reports milliseconds, achieved GB/s for the forward ops (pool: read x; combine: read x,
write out) and the fraction of a device-to-device copy measured in the same run.

    python benchmarks/bench_split_attention.py --out results.json          # GPU
    python benchmarks/bench_split_attention.py --device cpu --quick        # CPU
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the repository root, for an in-place build
from common import copy_bandwidth_gbs, environment, save_json, time_ms  # noqa: E402

import resnest_cuda  # noqa: E402
from resnest_cuda import reference  # noqa: E402

# (name, B, R, C, H, W)
DETECTION_SHAPES = [
    ("det 200x304 C64", 2, 2, 64, 200, 304),
    ("det 200x304 C128", 2, 2, 128, 200, 304),
    ("det 100x152 C128", 2, 2, 128, 100, 152),
    ("det 50x76 C256", 2, 2, 256, 50, 76),
    ("det 25x38 C512", 2, 2, 512, 25, 38),
]
TINY_SHAPES = [("tiny 16x16 C8", 2, 2, 8, 16, 16)]  # dry runs of the script
CLASSIFICATION_SHAPES = [
    ("cls 56x56 C64", 64, 2, 64, 56, 56),
    ("cls 28x28 C128", 64, 2, 128, 28, 28),
    ("cls 14x14 C256", 64, 2, 256, 14, 14),
    ("cls 7x7 C512", 64, 2, 512, 7, 7),
]


def implementations(compile_ref):
    impls = {"fused": (resnest_cuda.split_attention_pool, resnest_cuda.split_attention_combine)}
    impls["eager"] = (reference.split_attention_pool, reference.split_attention_combine)
    if compile_ref:
        compiled_pool = torch.compile(reference.split_attention_pool)
        compiled_combine = torch.compile(reference.split_attention_combine)
        impls["compile"] = (compiled_pool, compiled_combine)
    return impls


def bench_shape(shape, dtype, layout, impls, device, iters):
    name, b, r, c, h, w = shape
    x = torch.randn(b, r * c, h, w, device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    logits = torch.randn(b, r * c, device=device, dtype=dtype)
    grad_out = torch.randn(b, c, h, w, device=device, dtype=dtype)
    grad_gap = torch.randn(b, c, device=device, dtype=dtype)
    xg, lg = x.clone().requires_grad_(), logits.clone().requires_grad_()
    elem = x.element_size()
    pool_bytes = x.numel() * elem
    combine_bytes = (x.numel() + grad_out.numel()) * elem
    rows = []
    for impl, (pool, combine) in impls.items():

        def fwd_bwd(pool=pool, combine=combine):
            gap = pool(xg, r)
            out = combine(xg, lg, r, 1)
            torch.autograd.grad([gap, out], [xg, lg], [grad_gap, grad_out])

        t_pool = time_ms(lambda pool=pool: pool(x, r), device, iters=iters)
        t_combine = time_ms(lambda combine=combine: combine(x, logits, r, 1), device, iters=iters)
        t_train = time_ms(fwd_bwd, device, iters=iters)
        rows.append(
            dict(shape=name, dtype=str(dtype).replace("torch.", ""), layout=layout, impl=impl,
                 pool_ms=t_pool, combine_ms=t_combine, fwd_bwd_ms=t_train,
                 pool_gbs=pool_bytes / (t_pool * 1e-3) / 1e9, combine_gbs=combine_bytes / (t_combine * 1e-3) / 1e9)
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--layouts", default="contiguous,channels_last")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    parser.add_argument("--quick", action="store_true", help="detection shapes only, fp32 NCHW, few iterations")
    parser.add_argument("--shapes", choices=["all", "detection", "classification", "tiny"], default="all")
    parser.add_argument("--limit", type=int, default=0, help="only the first N shapes of the set (largest first)")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args(argv)

    shapes = {"all": DETECTION_SHAPES + CLASSIFICATION_SHAPES, "detection": DETECTION_SHAPES,
              "classification": CLASSIFICATION_SHAPES, "tiny": TINY_SHAPES}[args.shapes]
    shapes = shapes[: args.limit] if args.limit > 0 else shapes
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    layouts = args.layouts.split(",")
    if args.quick:
        shapes, dtypes, layouts, args.iters = DETECTION_SHAPES, [torch.float32], ["contiguous"], 5
    env = environment(args.device)
    copy_gbs = copy_bandwidth_gbs(args.device, nbytes=(8 if args.shapes == "tiny" else 256) * 2**20)
    print(f"{env}\ncopy bandwidth: {copy_gbs:.0f} GB/s (read + write)")
    impls = implementations(not args.no_compile)
    rows = []
    header = (f"{'shape':<18}{'dtype':<10}{'layout':<15}{'impl':<9}{'pool ms':>9}{'GB/s':>7}{'%copy':>7}"
              f"{'comb ms':>9}{'GB/s':>7}{'%copy':>7}{'fwd+bwd ms':>12}{'vs eager':>9}")
    print(header)
    for dtype in dtypes:
        for layout in layouts:
            for shape in shapes:
                group = bench_shape(shape, dtype, layout, impls, args.device, args.iters)
                eager = next(g for g in group if g["impl"] == "eager")
                for g in group:
                    g["pool_frac_copy"] = g["pool_gbs"] / copy_gbs
                    g["combine_frac_copy"] = g["combine_gbs"] / copy_gbs
                    g["fwd_bwd_speedup_vs_eager"] = eager["fwd_bwd_ms"] / g["fwd_bwd_ms"]
                    print(f"{g['shape']:<18}{g['dtype']:<10}{g['layout']:<15}{g['impl']:<9}"
                          f"{g['pool_ms']:>9.3f}{g['pool_gbs']:>7.0f}{g['pool_frac_copy']:>7.0%}"
                          f"{g['combine_ms']:>9.3f}{g['combine_gbs']:>7.0f}{g['combine_frac_copy']:>7.0%}"
                          f"{g['fwd_bwd_ms']:>12.3f}{g['fwd_bwd_speedup_vs_eager']:>8.1f}x")
                rows.extend(group)
    save_json(args.out, {"environment": env, "copy_gbs": copy_gbs, "results": rows})


if __name__ == "__main__":
    main()
