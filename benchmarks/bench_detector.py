"""End-to-end detector throughput and memory: our Faster/Mask/Cascade R-CNN on ResNeSt-FPN (fused split-attention
path and plain-PyTorch reference path, same weights) against torchvision's Faster/Mask R-CNN R-50-FPN (when
torchvision is importable).

Training: ms per iteration (forward + backward + SGD step) and peak memory at `--batch` images of `--size`
(default 2 x 800x1216, 81 classes as COCO), fp32 and bf16 autocast. Inference: images/s at batch 1 and 8.

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


def ours(config_name, impl, device, channels_last=False):
    cfg = get_config(config_name).model
    cfg.channels_last = channels_last
    model = build_model(cfg).to(device)
    for module in model.modules():
        if hasattr(module, "impl") and module.__class__.__name__ == "SplitAttentionConv2d":
            module.impl = impl
    with_masks = cfg.roi_head.mask_head is not None
    num_classes = cfg.roi_head.stages[0].box_head.num_classes
    return model, with_masks, num_classes, lambda targets: targets


def torchvision_model(kind, num_classes, device):
    from torchvision.models import detection as tvd

    ctor = tvd.maskrcnn_resnet50_fpn if kind == "mask" else tvd.fasterrcnn_resnet50_fpn
    model = ctor(weights=None, weights_backbone=None, num_classes=num_classes + 1).to(device)

    def convert(targets):  # torchvision: labels 1-based (0 is background), images 0-1
        return [{**t, "labels": t["labels"] + 1} for t in targets]

    return model, kind == "mask", num_classes, convert


def measure(name, model, with_masks, num_classes, convert, args, scale_images=1.0):
    rows = []
    device = args.device
    images, targets = synthetic_batch(args.batch, args.size, num_classes, with_masks, device)
    images = [im * scale_images for im in images]
    targets = convert(targets)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
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
        ms = time_ms(train_step, device, warmup=2, iters=args.iters)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
        rows.append(dict(model=name, mode="train", precision=precision, batch=args.batch, ms_per_iter=ms,
                         images_per_s=args.batch * 1e3 / ms, peak_mem_gb=peak))
        print(rows[-1])
        model.eval()
        for batch in args.infer_batches:
            infer_images = (images * batch)[:batch]

            def infer(autocast=autocast, infer_images=infer_images):
                with torch.no_grad(), autocast():
                    model(infer_images)

            ms = time_ms(infer, device, warmup=2, iters=args.iters)
            rows.append(dict(model=name, mode="infer", precision=precision, batch=batch, ms_per_iter=ms,
                             images_per_s=batch * 1e3 / ms, peak_mem_gb=None))
            print(rows[-1])
    sync(device)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", action="append", help="config name (repeatable); default: S-50 models")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", default="800x1216", help="HxW of the input images")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--infer-batches", default="1,8")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--impls", default="fused,reference")
    parser.add_argument("--layouts", default="nchw,channels_last",
                        help="memory format of our models (model.channels_last)")
    parser.add_argument("--no-torchvision", action="store_true")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    args.size = tuple(int(v) for v in args.size.split("x"))
    args.precisions = args.precisions.split(",")
    args.infer_batches = [int(b) for b in args.infer_batches.split(",")]
    env = environment(args.device)
    print(env)
    rows = []
    for config_name in args.config or DEFAULT_CONFIGS:
        for layout in args.layouts.split(","):
            if layout not in ("nchw", "channels_last"):
                raise SystemExit(f"--layouts: expected nchw and/or channels_last, got {layout!r}")
            for impl in args.impls.split(","):
                cl = layout == "channels_last"
                model, with_masks, num_classes, convert = ours(config_name, impl, args.device, cl)
                rows += measure(f"{config_name}[{impl},{layout}]", model, with_masks, num_classes, convert, args)
                del model
    if not args.no_torchvision:
        try:
            import torchvision  # noqa: F401
        except ImportError:
            print("torchvision not importable: skipping its models")
        else:
            for kind in ("faster", "mask"):
                model, with_masks, num_classes, convert = torchvision_model(kind, 80, args.device)
                rows += measure(f"torchvision_{kind}_rcnn_r50_fpn", model, with_masks, num_classes, convert, args,
                                scale_images=1 / 255)
                del model
    save_json(args.out, {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}, "results": rows})


if __name__ == "__main__":
    main()
