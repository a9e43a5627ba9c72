"""End-to-end detector throughput and memory: our Faster/Mask/Cascade R-CNN on ResNeSt-FPN (fused split-attention
path and plain-PyTorch reference path, same weights) against torchvision's Faster/Mask R-CNN R-50-FPN (when
torchvision is importable).

Training: ms per iteration (forward + backward + SGD step) and peak memory at `--batch` images of `--size`
(default 2 x 800x1216, 81 classes as COCO), fp32 and bf16 autocast. Inference: images/s at batch 1 and 8.

Equal work: random heads score every class about 1/81, below the usual 0.05 threshold, so inference would skip the
post-processing and mask head of some models and not others. Every model runs at `--score-thr` (default 0: all
of them return up to 100 detections per image and run their mask heads), and each inference row carries the
detections per image it produced. GFLOPs per image (inference, batch 1) and per training step, counted with
`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products; RoIAlign, NMS and the split-attention
ops are not counted), stand beside every model.

    python benchmarks/bench_detector.py --out detector.json                                  # GPU
    python benchmarks/bench_detector.py --device cpu --config shapes_mask_rcnn_s14 --size 128x128 \\
        --precisions fp32 --infer-batches 1 --iters 3 --no-torchvision                       # CPU, small default
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the repository root, for an in-place build
from common import environment, save_json, sync, time_ms  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from detection.build import build_model  # noqa: E402
from detection.configs import get_config  # noqa: E402

DEFAULT_CONFIGS = [
    "faster_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco",
    "mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco",
    "cascade_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco",
]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def synthetic_batch(batch, size, num_classes, with_masks, device, seed=0):
    """Random 0-255 images with 8 boxes each (labels 0-based), masks filling the boxes."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    images, targets = [], []
    for _ in range(batch):
        images.append((torch.rand(3, h, w, generator=g) * 255).to(device))
        xy = torch.rand(8, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 16 + torch.rand(8, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w - 1.0, h - 1.0]))], 1)
        target = {"boxes": boxes.to(device), "labels": torch.randint(0, num_classes, (8,), generator=g).to(device)}
        if with_masks:
            masks = torch.zeros(8, h, w, dtype=torch.uint8)
            for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
                masks[i, y1:y2, x1:x2] = 1
            target["masks"] = masks.to(device)
        targets.append(target)
    return images, targets


def ours(config_name, impl, device, channels_last=False, score_thr=0.0):
    cfg = get_config(config_name).model
    cfg.channels_last = channels_last
    cfg.roi_head.test.score_thr = score_thr
    model = build_model(cfg).to(device)
    for module in model.modules():
        if hasattr(module, "impl") and module.__class__.__name__ == "SplitAttentionConv2d":
            module.impl = impl
    with_masks = cfg.roi_head.mask_head is not None
    num_classes = cfg.roi_head.stages[0].box_head.num_classes
    return model, with_masks, num_classes, lambda targets: targets


TORCHVISION_MODELS = {  # name -> (constructor name in torchvision.models.detection, has a mask head)
    "faster": ("fasterrcnn_resnet50_fpn", False),
    "mask": ("maskrcnn_resnet50_fpn", True),
    "faster_v2": ("fasterrcnn_resnet50_fpn_v2", False),
    "mask_v2": ("maskrcnn_resnet50_fpn_v2", True),
}


def torchvision_model(kind, num_classes, device, score_thr=0.0):
    from torchvision.models import detection as tvd

    ctor_name, with_masks = TORCHVISION_MODELS[kind]
    model = getattr(tvd, ctor_name)(weights=None, weights_backbone=None, num_classes=num_classes + 1,
                                    box_score_thresh=score_thr).to(device)

    def convert(targets):  # torchvision: labels 1-based (0 is background), images 0-1
        return [{**t, "labels": t["labels"] + 1} for t in targets]

    return model, with_masks, num_classes, convert


def count_gflops(fn):
    """GFLOPs of one call of `fn` (FlopCounterMode: forward and, if `fn` runs it, backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def detections_per_image(outputs):
    return sum(len(o["boxes"]) for o in outputs) / len(outputs)


def measure(name, model, with_masks, num_classes, convert, args, scale_images=1.0):
    rows = []
    device = args.device
    images, targets = synthetic_batch(args.batch, args.size, num_classes, with_masks, device)
    images = [im * scale_images for im in images]
    targets = convert(targets)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    flops = {}  # counted once per mode and batch: FLOPs do not depend on the autocast dtype
    for precision in args.precisions:
        dtype = PRECISIONS[precision]

        def autocast(dtype=dtype):
            return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)

        model.train()

        def train_step(autocast=autocast):
            with autocast():
                losses = model(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        ms = time_ms(train_step, device, warmup=args.warmup, iters=args.iters)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
        if args.flops and "train" not in flops:
            flops["train"] = count_gflops(train_step)
        gflops = flops.get("train")
        rows.append(dict(model=name, mode="train", precision=precision, batch=args.batch, ms_per_iter=ms,
                         images_per_s=args.batch * 1e3 / ms, peak_mem_gb=peak, detections_per_image=None,
                         gflops=gflops))
        print_row(rows[-1])
        model.eval()
        for batch in args.infer_batches:
            infer_images = (images * batch)[:batch]

            def infer(autocast=autocast, infer_images=infer_images):
                with torch.no_grad(), autocast():
                    return model(infer_images)

            ms = time_ms(infer, device, warmup=args.warmup, iters=args.iters)
            dets = detections_per_image(infer())
            if args.flops and batch not in flops:
                flops[batch] = count_gflops(infer) / batch
            gflops = flops.get(batch)
            rows.append(dict(model=name, mode="infer", precision=precision, batch=batch, ms_per_iter=ms,
                             images_per_s=batch * 1e3 / ms, peak_mem_gb=None, detections_per_image=dets,
                             gflops=gflops))
            print_row(rows[-1])
    sync(device)
    return rows


HEADER = (f"{'model':<72} {'mode':<5} {'prec':<4} {'batch':>5} {'ms':>9} {'img/s':>8} {'peak GB':>7} "
          f"{'dets/img':>8} {'GFLOPs':>8}")


def print_row(r):
    def fmt(v, spec, width):
        return f"{v:{width}{spec}}" if v is not None else f"{'-':>{width}}"

    print(f"{r['model']:<72} {r['mode']:<5} {r['precision']:<4} {r['batch']:>5} {r['ms_per_iter']:9.2f} "
          f"{r['images_per_s']:8.2f} {fmt(r['peak_mem_gb'], '.2f', 7)} {fmt(r['detections_per_image'], '.1f', 8)} "
          f"{fmt(r['gflops'], '.1f', 8)}  (GFLOPs: {'per image' if r['mode'] == 'infer' else 'per step'})",
          flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", action="append", help="config name (repeatable); default: S-50 models")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", default="800x1216", help="HxW of the input images")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--infer-batches", default="1,8")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--impls", default="fused,reference")
    parser.add_argument("--layouts", default="nchw,channels_last",
                        help="memory format of our models (model.channels_last)")
    parser.add_argument("--score-thr", type=float, default=0.0,
                        help="detection score threshold of every model (0: equal work, up to 100 detections)")
    parser.add_argument("--torchvision", default="faster,mask,faster_v2",
                        help=f"torchvision peers to run when torchvision is importable: {','.join(TORCHVISION_MODELS)}")
    parser.add_argument("--no-torchvision", action="store_true")
    parser.add_argument("--no-flops", dest="flops", action="store_false", help="skip the FLOP counts")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    args.size = tuple(int(v) for v in args.size.split("x"))
    args.precisions = args.precisions.split(",")
    args.infer_batches = [int(b) for b in args.infer_batches.split(",")]
    env = environment(args.device)
    print(env)
    print(HEADER)
    rows = []
    for config_name in args.config or DEFAULT_CONFIGS:
        for layout in args.layouts.split(","):
            if layout not in ("nchw", "channels_last"):
                raise SystemExit(f"--layouts: expected nchw and/or channels_last, got {layout!r}")
            for impl in args.impls.split(","):
                cl = layout == "channels_last"
                model, with_masks, num_classes, convert = ours(config_name, impl, args.device, cl, args.score_thr)
                rows += measure(f"{config_name}[{impl},{layout}]", model, with_masks, num_classes, convert, args)
                del model
    if not args.no_torchvision:
        try:
            import torchvision  # noqa: F401
        except ImportError:
            print("torchvision not importable: skipping its models")
        else:
            for kind in args.torchvision.split(","):
                if kind not in TORCHVISION_MODELS:
                    raise SystemExit(f"--torchvision: expected names from {sorted(TORCHVISION_MODELS)}, got {kind!r}")
                model, with_masks, num_classes, convert = torchvision_model(kind, 80, args.device, args.score_thr)
                rows += measure(f"torchvision_{TORCHVISION_MODELS[kind][0]}", model, with_masks, num_classes,
                                convert, args, scale_images=1 / 255)
                del model
    save_json(args.out, {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}, "results": rows})


if __name__ == "__main__":
    main()
