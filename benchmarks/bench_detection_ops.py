"""Microbenchmark of RoIAlign and NMS: ours vs torchvision on CUDA, ours vs the pure-PyTorch reference on CPU.

RoIAlign pools ROIs from a 5-level FPN pyramid (batch 2 at an 800x1216 input, 256 channels, strides 4..64); each ROI
is pooled from level floor(log2(sqrt(w*h) / 56)) clamped to 0..3 (strides 4..32), as the detector's RoI extractor
does; ours is also timed as the detector runs it, one multi_level_roi_align call over all levels ("ours
multi-level"). RoIAlign is timed with the pyramid in each of --layouts (NCHW and channels_last by default: on CUDA
the two layouts run different thread mappings). NMS runs on proposal-like boxes (clustered, random scores) at
IoU 0.7.

    python -m benchmarks.bench_detection_ops --out results.json            # every device available
    python -m benchmarks.bench_detection_ops --device cpu --iters 2 --out cpu.json

--batched-paths times the two batched NMS paths against each other on the CPU instead (one NMS over boxes offset
by category, and the per-category op) over the --batched-sizes box counts, --batched-classes categories (default
80) and --batched-max-keep (default -1: no limit), IoU 0.5, their repetitions interleaved (A, B, A, B, ...), and
checks that they keep the same boxes:

    python -m benchmarks.bench_detection_ops --batched-paths --out batched.json
"""

import argparse
import json
import math
import platform
import time
from collections.abc import Callable

import torch

import resnest_cuda
from resnest_cuda import reference

IMAGE_H, IMAGE_W, BATCH, CHANNELS = 800, 1216, 2, 256
STRIDES = (4, 8, 16, 32, 64)
ROI_STRIDES = STRIDES[:4]


def feature_pyramid(device: str, dtype: torch.dtype, channels: int = CHANNELS) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(BATCH, channels, math.ceil(IMAGE_H / s), math.ceil(IMAGE_W / s), generator=g).to(device, dtype)
        for s in STRIDES
    ]


def random_boxes(num: int, seed: int) -> torch.Tensor:
    """``[num, 4]`` xyxy boxes inside the image: sizes log-uniform in 16..800 px, aspect ratio 0.5..2."""
    g = torch.Generator().manual_seed(seed)
    size = torch.exp(torch.empty(num).uniform_(math.log(16), math.log(800), generator=g))
    ratio = torch.exp(torch.empty(num).uniform_(math.log(0.5), math.log(2.0), generator=g))
    w, h = size * ratio.sqrt(), size / ratio.sqrt()
    cx, cy = torch.rand(num, generator=g) * IMAGE_W, torch.rand(num, generator=g) * IMAGE_H
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    return torch.min(boxes.clamp(min=0), torch.tensor([IMAGE_W, IMAGE_H, IMAGE_W, IMAGE_H]).float())


def rois_per_level(num: int, device: str) -> list[torch.Tensor]:
    """``num`` ROIs ``[k, 5]`` over the batch, split by FPN level (finest_scale 56, levels 0..3)."""
    boxes = random_boxes(num, seed=num)
    batch = (torch.arange(num) % BATCH).float()[:, None]
    rois = torch.cat([batch, boxes], dim=1)
    scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    level = torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(0, len(ROI_STRIDES) - 1).long()
    return [rois[level == i].to(device) for i in range(len(ROI_STRIDES))]


def nms_inputs(num: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(num)
    base = random_boxes(num // 10 + 1, seed=num + 1)
    boxes = base[torch.randint(0, len(base), (num,), generator=g)]
    boxes = boxes + torch.randn(num, 4, generator=g) * 8  # proposal-like clusters around objects
    boxes[:, 2:] = torch.max(boxes[:, 2:], boxes[:, :2] + 1)
    return boxes.to(device), torch.rand(num, generator=g).to(device)


def timed_ms(fn: Callable[[], object], device: str, iters: int) -> float:
    """Median wall time of fn() in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def multilevel_roi_align(impl: Callable, feats: list[torch.Tensor], rois: list[torch.Tensor], size: int):
    return [impl(f, r, (size, size), 1.0 / s, 0, True) for f, r, s in zip(feats, rois, ROI_STRIDES) if len(r) > 0]


def one_multi_level_op(feats: list[torch.Tensor], rois: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    return [resnest_cuda.multi_level_roi_align(feats[: len(ROI_STRIDES)], torch.cat(rois), size, ROI_STRIDES)]


def bench_roi_align(
    impl: Callable, feats, rois, size: int, device: str, iters: int, backward: bool = True
) -> tuple[float, float | None]:
    """impl: a roi_align (called once per level), or one_multi_level_op."""
    pool = impl if impl is one_multi_level_op else lambda f, r, s: multilevel_roi_align(impl, f, r, s)
    feats_g = [f.detach().requires_grad_() for f in feats]
    grads = [torch.randn_like(o) for o in pool(feats, rois, size)]

    def forward():
        with torch.no_grad():
            pool(feats, rois, size)

    def forward_backward():
        outs = pool(feats_g, rois, size)
        torch.autograd.backward(outs, grads)

    return timed_ms(forward, device, iters), timed_ms(forward_backward, device, iters) if backward else None


def implementations(device: str) -> dict[str, dict[str, Callable]]:
    impls = {"ours": {"roi_align": resnest_cuda.roi_align, "nms": resnest_cuda.nms},
             "ours multi-level": {"roi_align": one_multi_level_op}}
    if device == "cpu":
        impls["reference"] = {"roi_align": reference.roi_align, "nms": reference.nms}
    else:
        try:
            import torchvision

            impls["torchvision"] = {"roi_align": torchvision.ops.roi_align, "nms": torchvision.ops.nms}
        except ImportError:
            pass
    return impls


LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def run_device(device: str, iters: int, dtype: torch.dtype, roi_sets, nms_sizes, channels=CHANNELS,
               layouts=tuple(LAYOUTS)) -> list[dict]:
    pyramid = feature_pyramid(device, dtype, channels)
    records = []
    for name, ops in implementations(device).items():
        for layout in layouts:
            feats = [f.contiguous(memory_format=LAYOUTS[layout]) for f in pyramid]
            for num in roi_sets:
                rois = rois_per_level(num, device)
                for size in (7, 14):
                    # The reference's autograd graph keeps [k, C, ph, W] matmul results per level (GBs at 14x14).
                    backward = not (name == "reference" and size > 7)
                    fwd, fwd_bwd = bench_roi_align(ops["roi_align"], feats, rois, size, device, iters, backward)
                    case = f"{num} rois {size}x{size} {layout} (per level {[len(r) for r in rois]})"
                    rec = dict(op="roi_align", case=case, layout=layout, device=device, impl=name, fwd_ms=fwd)
                    records.append(rec if fwd_bwd is None else dict(rec, fwd_bwd_ms=fwd_bwd))
                    print(f"  {records[-1]}", flush=True)
        if "nms" not in ops:
            continue
        for num in nms_sizes:
            boxes, scores = nms_inputs(num, device)
            ms = timed_ms(lambda ops=ops, b=boxes, s=scores: ops["nms"](b, s, 0.7), device, iters)
            records.append(dict(op="nms", case=f"{num} boxes iou 0.7", device=device, impl=name, fwd_ms=ms))
            print(f"  {records[-1]}", flush=True)
    return records


def batched_nms_paths(sizes, classes: int, max_keep: int, iters: int) -> list[dict]:
    """Median ms of the offset path and of the per-category path of batched NMS on the CPU, interleaved."""
    from resnest_cuda.detection_ops import _offset_by_category

    ops = torch.ops.resnest_cuda
    records = []
    for num in sizes:
        boxes, scores = nms_inputs(num, "cpu")
        boxes = boxes.round()  # integer coordinates: the offset is exact, so both paths must keep the same boxes
        idxs = torch.randint(0, classes, (num,), generator=torch.Generator().manual_seed(num))
        paths = {
            "offset": lambda b=boxes, s=scores, i=idxs: ops.nms(_offset_by_category(b, i), s, 0.5, max_keep),
            "per_class": lambda b=boxes, s=scores, i=idxs: ops._batched_nms_per_class(b, s, i, 0.5, max_keep),
        }
        if not torch.equal(paths["offset"](), paths["per_class"]()):
            raise AssertionError(f"the batched NMS paths disagree on {num} boxes")
        times = {name: [] for name in paths}
        for _ in range(iters):
            for name, fn in paths.items():
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e3)
        med = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
        rec = dict(op="batched_nms", case=f"{num} boxes {classes} classes iou 0.5 max_keep {max_keep}", device="cpu",
                   offset_ms=med["offset"], per_class_ms=med["per_class"], offset_over_per_class=med["offset"] /
                   med["per_class"])
        records.append(rec)
        print(f"  {rec}", flush=True)
    return records


def print_table(records: list[dict]) -> None:
    print(f"{'device':6} {'op':9} {'case':64} {'impl':17} {'fwd ms':>10} {'fwd+bwd ms':>11} {'ours x':>7}")
    for r in records:
        ours = next(o for o in records if o["impl"] == "ours" and o["case"] == r["case"] and o["device"] == r["device"])
        speedup = r["fwd_ms"] / ours["fwd_ms"]
        fb = f"{r['fwd_bwd_ms']:11.2f}" if "fwd_bwd_ms" in r else f"{'-':>11}"
        print(f"{r['device']:6} {r['op']:9} {r['case']:64} {r['impl']:17} {r['fwd_ms']:10.2f} {fb} {speedup:7.2f}")
    print("ours x = this row's forward time / ours (how many times faster ours is)")
    print_layout_ratios(records)


def print_layout_ratios(records: list[dict]) -> None:
    """channels_last time / NCHW time of each RoIAlign case (the goal on CUDA: <= 1, no slower)."""
    nchw = {(r["device"], r["impl"], r["case"].replace(" nchw ", " ")): r for r in records if r.get("layout") == "nchw"}
    for r in records:
        peer = nchw.get((r["device"], r["impl"], r["case"].replace(" channels_last ", " ")))
        if r.get("layout") != "channels_last" or peer is None:
            continue
        ratios = [f"{key} {r[key] / peer[key]:.2f}" for key in ("fwd_ms", "fwd_bwd_ms") if key in r and key in peer]
        print(f"channels_last / nchw  {r['device']:6} {r['impl']:17} {r['case']:60} {', '.join(ratios)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--iters", type=int, default=0, help="timed iterations (default: 20 on CUDA, 3 on CPU)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--channels", type=int, default=CHANNELS, help="feature channels of the pyramid")
    parser.add_argument("--roi-sets", default="1000,2048", help="ROI counts to pool (comma list)")
    parser.add_argument("--nms-sizes", default="2000,10000", help="box counts for NMS (comma list)")
    parser.add_argument("--batched-paths", action="store_true", help="time the two CPU batched NMS paths only")
    parser.add_argument("--batched-sizes", default="1000,2000,3000,5000,10000,20000,40000,80000",
                        help="box counts for --batched-paths (comma list)")
    parser.add_argument("--batched-classes", type=int, default=80, help="categories for --batched-paths")
    parser.add_argument("--batched-max-keep", type=int, default=-1, help="max_keep for --batched-paths")
    parser.add_argument("--layouts", default="nchw,channels_last", help="pyramid layouts for RoIAlign (comma list)")
    parser.add_argument("--out", required=True, help="path of the JSON results")
    args = parser.parse_args(argv)
    if args.batched_paths:
        sizes = tuple(int(v) for v in args.batched_sizes.split(","))
        records = batched_nms_paths(sizes, args.batched_classes, args.batched_max_keep, iters=args.iters or 7)
        with open(args.out, "w") as f:
            json.dump(dict(meta=dict(torch=torch.__version__, cpu_threads=torch.get_num_threads(),
                                     date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())), results=records), f,
                      indent=2)
        print(f"wrote {args.out}")
        return
    roi_sets = tuple(int(v) for v in args.roi_sets.split(","))
    nms_sizes = tuple(int(v) for v in args.nms_sizes.split(","))
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    dtype = getattr(torch, args.dtype)
    records = []
    for device in devices:
        iters = args.iters or (20 if device == "cuda" else 3)
        records += run_device(device, iters, dtype, roi_sets, nms_sizes, args.channels,
                              tuple(args.layouts.split(",")))
    print_table(records)
    meta = dict(
        torch=torch.__version__,
        dtype=args.dtype,
        cpu=platform.processor() or platform.machine(),
        cpu_threads=torch.get_num_threads(),
        gpu=torch.cuda.get_device_name() if "cuda" in devices else None,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, results=records), f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
