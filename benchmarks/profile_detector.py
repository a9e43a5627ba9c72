"""Where a detector's training step spends its time: torch.profiler over a few training iterations on a synthetic
batch, the top operators by self time, the time per model part (backbone, neck, RPN, RoI heads, backward,
optimizer), and on CUDA the number of host synchronisations per iteration with the Python line that caused each.

    python -m benchmarks.profile_detector --config faster_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco \\
        --out prof/                                                                       # GPU, 2 x 800x1216
    python -m benchmarks.profile_detector --device cpu --config shapes_mask_rcnn_s14 --batch 4 --size 96x96

With --out DIR it also writes DIR/trace.json (open in chrome://tracing or Perfetto) and DIR/profile.json.
"""

import argparse
import collections
import os
import time
import traceback
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

from detection.build import build_model
from detection.configs import get_config

from .bench_detector import PRECISIONS, synthetic_batch
from .common import environment, save_json, sync

PARTS = ("backbone", "neck", "rpn_head", "roi_head")


def part_timer(model, device):
    """Forward hooks that add each part's wall time (synchronised on CUDA) to a dict."""
    totals = collections.defaultdict(float)

    def before(module, _args):
        sync(device)
        module._profile_start = time.perf_counter()

    def after(name):
        def hook(module, _args, _output):
            sync(device)
            totals[name] += time.perf_counter() - module._profile_start

        return hook

    for name in PARTS:
        module = getattr(model, name)
        module.register_forward_pre_hook(before)
        module.register_forward_hook(after(name))
    return totals


def sync_sites(step, skip=("torch/", "warnings.py", "profile_detector.py")):
    """Run `step` once with CUDA sync debugging on; return {"file:line": count} of the calls that synchronised the
    host with the device (the innermost frame outside torch and this script)."""
    sites = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        stack = [f for f in traceback.extract_stack()[:-1] if not any(s in f.filename for s in skip)]
        where = f"{os.path.relpath(stack[-1].filename)}:{stack[-1].lineno}" if stack else f"{filename}:{lineno}"
        sites[where] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record  # restored when the block exits
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return dict(sites.most_common())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", default="faster_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", default="800x1216", help="HxW of the input images")
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))
    parser.add_argument("--iters", type=int, default=5, help="profiled iterations (after the warm-up ones)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up iterations")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--out", default="", help="folder for trace.json and profile.json")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    device = args.device

    cfg = get_config(args.config).model
    model = build_model(cfg).to(device).train()
    num_classes = cfg.roi_head.stages[0].box_head.num_classes
    images, targets = synthetic_batch(args.batch, size, num_classes, cfg.roi_head.mask_head is not None, device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    dtype = PRECISIONS[args.precision]
    phases = collections.defaultdict(float)

    def step(timed=True):
        if not timed:  # no explicit synchronisations: what sync_sites counts is the model's own
            with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
                loss = sum(model(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return
        start = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            losses = model(images, targets)
        loss = sum(losses.values())
        sync(device)
        phases["forward"] += time.perf_counter() - start
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        phases["backward"] += time.perf_counter() - start
        start = time.perf_counter()
        optimizer.step()
        sync(device)
        phases["optimizer"] += time.perf_counter() - start

    for _ in range(args.warmup):
        step()
    syncs = sync_sites(lambda: step(timed=False)) if device.startswith("cuda") else {}
    sync(device)
    parts = part_timer(model, device)
    phases.clear()
    for _ in range(args.iters):
        step()
    breakdown = {name: 1e3 * t / args.iters for name, t in {**parts, **phases}.items()}

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        for _ in range(args.iters):
            step()
    sort_by = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=args.rows)

    env = environment(device)
    print(env)
    print(f"{args.config}: batch {args.batch} x {size[0]}x{size[1]}, {args.precision}; ms per iteration "
          "(model parts are forward only, timed with hooks; forward/backward/optimizer add up to a step):")
    for name, ms in breakdown.items():
        print(f"  {name:10s} {ms:9.1f}")
    if syncs:
        print(f"host synchronisations in one training iteration: {sum(syncs.values())}")
        for where, count in syncs.items():
            print(f"  {count:4d}  {where}")
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        prof.export_chrome_trace(os.path.join(args.out, "trace.json"))
        save_json(os.path.join(args.out, "profile.json"),
                  {"environment": env, "args": vars(args), "ms_per_iter": breakdown, "sync_sites": syncs})


if __name__ == "__main__":
    main()
