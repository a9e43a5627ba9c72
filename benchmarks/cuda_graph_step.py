"""A whole detector training step (forward, backward, SGD) captured once as a CUDA graph and replayed.

A fixed-size training step (`GeneralizedRCNN.static_shapes`) has no host synchronisation, so the step can be
captured with `torch.cuda.graph` and replayed with one launch: no Python, no per-kernel launch cost. This script
times the eager step and the replayed graph on the same synthetic batch (interleaved, CUDA events, median), checks
that every replayed step's losses are finite and that the replays train (the losses on the fixed batch go down),
and writes the figures as JSON. The eager steps run first, then the replays (see `run_cuda`).

Capture follows PyTorch's whole-network recipe: a few warm-up steps on a side stream, gradients set to None, then
forward, backward and `optimizer.step()` inside `torch.cuda.graph`; new data would be copied into the captured
input tensors before each replay. The sampler's random draws are graph-safe (each replay draws anew).

On a machine without CUDA the script runs one eager step on the CPU at the given size and stops (`--device cpu`:
the step function itself is checked, nothing is captured).

  python -m benchmarks.cuda_graph_step [--config NAME] [--batch 2] [--size 800x1216] [--iters 10] [--out F]
"""

import argparse
import statistics

import torch

from detection.build import build_model
from detection.configs import get_config

from .bench_detector import synthetic_batch
from .common import environment, save_json

DEFAULT_CONFIG = "faster_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco"


def build(config: str, device: str, backbone: str | None = None):
    cfg = get_config(config).model
    if backbone:
        cfg.backbone.name = backbone
    cfg.backbone.norm = "bn"  # one process: SyncBN would be BN anyway, and BN captures without a process group
    for stage in cfg.roi_head.stages:
        stage.box_head.norm = "bn" if stage.box_head.norm == "syncbn" else stage.box_head.norm
    if cfg.roi_head.mask_head is not None and cfg.roi_head.mask_head.norm == "syncbn":
        cfg.roi_head.mask_head.norm = "bn"
    model = build_model(cfg).to(device).train()
    model.static_shapes = True
    num_classes = cfg.roi_head.stages[0].box_head.num_classes
    return model, num_classes, cfg.roi_head.mask_head is not None


def train_step(model, optimizer, images, targets) -> dict[str, torch.Tensor]:
    """One training step; returns the (detached) losses. Gradients are set to None at the start, as capture needs."""
    optimizer.zero_grad(set_to_none=True)
    losses = model(images, targets)
    sum(losses.values()).backward()
    optimizer.step()
    return {k: v.detach() for k, v in losses.items()}


def _time(fn, iters: int) -> list[float]:
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def run_cuda(model, optimizer, images, targets, iters: int, warmup: int) -> dict:
    """Eager steps first, then capture and replays: the captured gradients must stay where the graph wrote them,
    so no eager step (which sets them to None) may run between replays."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            train_step(model, optimizer, images, targets)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    first = {k: float(v) for k, v in train_step(model, optimizer, images, targets).items()}
    eager_ms = _time(lambda: train_step(model, optimizer, images, targets), iters)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    try:
        with torch.cuda.graph(graph):
            static_losses = model(images, targets)
            sum(static_losses.values()).backward()
            optimizer.step()
    except Exception as error:  # what blocks capture is the finding: report it instead of failing the run
        return {"eager_ms": statistics.median(eager_ms), "capture_error": f"{type(error).__name__}: {error}"[:2000]}
    replay_ms, finite = [], True
    for _ in range(iters):
        replay_ms += _time(graph.replay, 1)
        finite &= all(bool(torch.isfinite(v)) for v in static_losses.values())
    for _ in range(4 * iters):
        graph.replay()
    last = {k: float(v) for k, v in static_losses.items()}
    return {
        "eager_ms": statistics.median(eager_ms),
        "graph_replay_ms": statistics.median(replay_ms),
        "speedup": statistics.median(eager_ms) / statistics.median(replay_ms),
        "losses_first": first,
        "losses_after_replays": last,
        "all_replays_finite": finite,
        "total_loss_went_down": sum(last.values()) < sum(first.values()),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--backbone", default="", help="override the config's backbone (e.g. resnest14)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", default="800x1216", help="HxW of the synthetic images")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    model, num_classes, with_masks = build(args.config, args.device, args.backbone or None)
    images, targets = synthetic_batch(args.batch, size, num_classes, with_masks, args.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9)
    result = {"args": vars(args), "environment": environment(args.device)}
    if args.device.startswith("cuda"):
        result.update(run_cuda(model, optimizer, images, targets, args.iters, args.warmup))
        if "capture_error" in result:
            print(f"{args.config}: eager step {result['eager_ms']:.1f} ms; capture failed: {result['capture_error']}")
        else:
            print(f"{args.config}: eager step {result['eager_ms']:.1f} ms, CUDA graph replay "
                  f"{result['graph_replay_ms']:.1f} ms ({result['speedup']:.2f}x); replays finite: "
                  f"{result['all_replays_finite']}, loss went down: {result['total_loss_went_down']}")
    else:
        losses = train_step(model, optimizer, images, targets)
        result["losses_first"] = {k: float(v) for k, v in losses.items()}
        print(f"{args.config}: one eager fixed-size step on {args.device} (no CUDA: nothing captured); "
              f"losses finite: {all(bool(torch.isfinite(v)) for v in losses.values())}")
    if args.out:
        save_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
