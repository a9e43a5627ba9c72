"""How many positives the R-CNN sampler gives the mask head, and what the mask head costs per training step.

    python -m benchmarks.mask_positives positives [--batches 8] [--model mask]
    python -m benchmarks.mask_positives flops [--slots 64] [--objects 8] [--proposals early]

`positives`: the number of sampled positives per image and per batch of 2 (mean, p50, p95, p99, max) of the Mask
R-CNN S-50 seed config's matcher and sampler (GT boxes added as proposals), on
- "shapes": the embedded default dataset's generator (detection/data/shapes.py, also the one of
  `python -m detection.data.example_coco`: 1-4 objects), its 128-pixel images scaled to 512x512;
- "many": a synthetic batch of 20-40 boxes per image (sides log-uniform in 16-256 pixels) in 512x768 images;
- "coco_counts": COCO-like object counts (an assumed distribution, mean 7.3 per image: not COCO's images),
with two kinds of proposals: "early", those of the seed config's RPN at random initialisation (1000 per image,
scored by the untrained RPN), and "trained", a stand-in for a trained RPN (no trained checkpoint is at hand): 1000
proposals per image, 60 jittered copies of each GT box scored by their IoU with it (plus noise) and random boxes
scored low, reduced by NMS at 0.7 as the RPN's proposals are. COCO is not measured here.

`flops`: the FLOPs (torch.utils.flop_counter.FlopCounterMode, fp32, forward and backward) of the mask part of one
training step, `mask_head_loss` (mask RoIAlign, FCN mask head, per-class BCE), of the S-50 Mask R-CNN head on
2 x 512x768 (FPN features of that size, random), with fixed-size samples: without a cap (pos_limit slots per
image), with the cap `--slots` per image, and on the compacted positives alone (mmdetection's work); proposals
"early" (random boxes, as a randomly initialised RPN's) or "trained" (the stand-in above).
"""

import argparse
import math
import statistics

import numpy as np
import torch

from detection.build import build_model
from detection.configs import get_config
from detection.modeling import roi_heads
from detection.modeling.box_ops import box_iou

from .count_syncs import MODELS

SIZE = (512, 768)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def describe(values: list[float]) -> str:
    return (
        f"mean {statistics.fmean(values):.1f} p50 {_quantile(values, 0.5):.0f} p95 {_quantile(values, 0.95):.0f} "
        f"p99 {_quantile(values, 0.99):.0f} max {max(values):.0f} (n={len(values)})"
    )


def shapes_targets(rng: np.random.Generator, scale: int = 4) -> tuple[tuple[int, int], dict]:
    from detection.data.shapes import render_image

    _, shapes = render_image(rng, 128, 4)
    boxes = []
    for shape in shapes:
        ys, xs = np.nonzero(shape["visible"])
        if xs.size:
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) * scale
    return (128 * scale, 128 * scale), {"boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.int64)}


def many_targets(g: torch.Generator) -> tuple[tuple[int, int], dict]:
    h, w = SIZE
    n = int(torch.randint(20, 41, (), generator=g))
    wh = torch.exp(torch.empty(n, 2).uniform_(math.log(16), math.log(256), generator=g))
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
    boxes = torch.cat([xy, xy + wh], 1)
    return SIZE, {"boxes": boxes, "labels": torch.zeros(n, dtype=torch.int64)}


def coco_count_targets(g: torch.Generator) -> tuple[tuple[int, int], dict]:
    """COCO-like object counts, assumed rather than measured: geometric with mean 7.3 (COCO train2017's mean
    count of non-crowd instances per image), at most 60; box sides log-uniform in 8-400 pixels."""
    h, w = SIZE
    n = min(60, 1 + int(torch.distributions.Geometric(probs=torch.tensor(1 / 7.3)).sample()))
    wh = torch.exp(torch.rand(n, 2, generator=g) * (math.log(400) - math.log(8)) + math.log(8))
    wh = wh.minimum(torch.tensor([w - 1.0, h - 1.0]))
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
    return SIZE, {"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.zeros(n, dtype=torch.int64)}


def trained_proposals(gt: torch.Tensor, size: tuple[int, int], g: torch.Generator, num: int = 1000) -> torch.Tensor:
    from resnest_cuda import batched_nms

    h, w = size
    parts, scores = [], []
    if gt.shape[0]:
        base = gt.repeat_interleave(60, 0)
        wh = (base[:, 2:] - base[:, :2]).clamp(min=1)
        centre = (base[:, :2] + base[:, 2:]) / 2 + torch.randn(base.shape[0], 2, generator=g) * 0.12 * wh
        size_j = wh * torch.exp(torch.randn(base.shape[0], 2, generator=g) * 0.15)
        jittered = torch.cat([centre - size_j / 2, centre + size_j / 2], 1)
        iou = box_iou(gt, jittered).max(0).values
        parts.append(jittered)
        scores.append(iou + 0.1 * torch.rand(iou.shape, generator=g))
    xy = torch.rand(num, 2, generator=g) * torch.tensor([w, h])
    wh = torch.exp(torch.empty(num, 2).uniform_(math.log(8), math.log(400), generator=g))
    parts.append(torch.cat([xy, xy + wh], 1))
    scores.append(0.3 * torch.rand(num, generator=g))
    boxes, scores = torch.cat(parts), torch.cat(scores)
    boxes = torch.stack(
        [boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], 1
    )
    keep = batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.int64), 0.7)[:num]
    return boxes[keep]


def positives(args) -> None:
    torch.manual_seed(0)
    cfg = get_config(MODELS[args.model]).model
    cfg.backbone.norm = "bn"
    model = build_model(cfg).train()
    head = model.roi_head
    matcher, sampler = (
        (head.matchers[0], head.samplers[0]) if hasattr(head, "matchers") else (head.matcher, head.sampler)
    )
    print(
        f"{MODELS[args.model]}: sampler num {sampler.num}, pos_limit {sampler.pos_limit}, add_gt "
        f"{sampler.add_gt_as_proposals}"
    )
    draw = {
        "shapes": lambda rng, g: shapes_targets(rng),
        "many": lambda rng, g: many_targets(g),
        "coco_counts": lambda rng, g: coco_count_targets(g),
    }
    for data in args.data.split(","):
        rng, g = np.random.default_rng(0), torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        for kind in args.kinds.split(","):
            per_image, per_batch, gts = [], [], []
            for _ in range(args.batches):
                batch = [draw[data](rng, g) for _ in range(2)]
                sizes, targets = [b[0] for b in batch], [b[1] for b in batch]
                if kind == "early":
                    with torch.no_grad():
                        images = [torch.rand(3, *s) * 255 for s in sizes]
                        tensor, image_sizes, padded = model.transform(images)
                        features = model.neck(model.backbone(tensor))
                        proposals, _, _ = model.rpn_head(features, image_sizes, padded, targets, False)
                else:
                    proposals = [trained_proposals(t["boxes"], s, g) for t, s in zip(targets, sizes)]
                samples = roi_heads.label_and_sample_proposals(
                    proposals, targets, matcher, sampler, head_coder(head), 80, compact=True
                )
                counts = torch.bincount(samples.rois[samples.pos, 0].long(), minlength=2).tolist()
                per_image += counts
                per_batch.append(sum(counts))
                gts += [t["boxes"].shape[0] for t in targets]
            drops = []
            for cap in (32, 48, 64, 96, 112):
                lost = [max(0, b - 2 * cap) for b in per_batch]
                share = sum(b > 0 for b in lost) / len(lost)
                drops.append(f"{cap}: {100 * share:.0f}% of batches, {100 * sum(lost) / max(sum(per_batch), 1):.1f}%")
            print(
                f"{data:6s} {kind:7s} GT/image {statistics.fmean(gts):.1f} | positives per image: "
                f"{describe(per_image)} | per batch of 2: {describe(per_batch)}",
                flush=True,
            )
            print(f"    cap per image -> batches that drop, positives dropped: {'; '.join(drops)}", flush=True)


def head_coder(head):
    return head.coders[0] if hasattr(head, "coders") else head.coder


def flops(args) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    cfg = get_config(MODELS["mask"]).model
    cfg.backbone.norm = "bn"
    cfg.roi_head.mask_head.norm = "bn"
    cfg.roi_head.stages[0].box_head.norm = "bn"
    model = build_model(cfg).train()
    head = model.roi_head
    h, w = SIZE
    features = [torch.randn(2, 256, h // s, w // s, requires_grad=True) for s in (4, 8, 16, 32, 64)]
    g = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(2):
        _, t = many_targets(g) if args.objects > 8 else (None, None)
        if t is None:
            from benchmarks.bench_detector import synthetic_batch

            t = synthetic_batch(1, SIZE, 80, True, "cpu", seed=len(targets))[1][0]
        else:
            t["masks"] = torch.zeros(t["boxes"].shape[0], h, w, dtype=torch.uint8)
            for i, (x1, y1, x2, y2) in enumerate(t["boxes"].long().tolist()):
                t["masks"][i, y1:y2, x1:x2] = 1
        targets.append(t)
    if args.proposals == "trained":
        proposals = [trained_proposals(t["boxes"], SIZE, g) for t in targets]
    else:  # random boxes, as a randomly initialised RPN's: the positives are the GT boxes and a few chance matches
        proposals = [trained_proposals(t["boxes"][:0], SIZE, g) for t in targets]
    gt_masks = roi_heads.gt_mask_inputs(targets, torch.float32)
    results = {}
    for name, static, slots in (
        ("before (fixed, pos_limit rows/image)", True, None),
        (f"after (fixed, cap {args.slots}/image)", True, args.slots),
        ("compacted positives (mmdetection's work)", False, None),
    ):
        torch.manual_seed(1)
        samples = roi_heads.label_and_sample_proposals(
            proposals, targets, head.matcher, head.sampler, head.coder, 80, compact=not static
        )
        num_pos = int(samples.pos.sum())
        with FlopCounterMode(display=False) as counter:
            loss, dropped = roi_heads.mask_head_loss(
                head.mask_pooler, head.mask_head, features, samples, gt_masks, head.sampler.pos_limit, slots
            )
            loss.backward()
        rows = roi_heads.select_mask_rois(samples, 2, head.sampler.pos_limit, slots).slots.numel()
        results[name] = counter.get_total_flops()
        print(
            f"{name:45s} positives {num_pos:4d} rows {rows:4d} dropped {0 if dropped is None else int(dropped):3d} "
            f"GFLOPs {counter.get_total_flops() / 1e9:8.1f}",
            flush=True,
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("positives", "flops"))
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--model", default="mask", choices=("mask", "cascade_mask"))
    parser.add_argument("--data", default="shapes,many", help="of shapes, many, coco_counts")
    parser.add_argument("--kinds", default="early,trained", help="of early, trained")
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--proposals", default="early", choices=("early", "trained"))
    parser.add_argument("--objects", type=int, default=8, help="8: bench_detector's synthetic batch; more: 20-40")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    positives(args) if args.what == "positives" else flops(args)


if __name__ == "__main__":
    main()
