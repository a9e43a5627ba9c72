"""Training-step census: what one training step (forward + backward of the total loss, no optimizer step) of our
Faster / Mask R-CNN S-50-FPN costs, counted on the CPU as a model of its GPU cost, against mmdetection 3.3's same
models and torchvision's R-50-FPN ones, on identical images and targets.

Columns (rules in benchmarks/census_counters.py): ops (dispatched ops that are not views or bare allocations,
about one kernel launch each), GB moved (bytes of the tensor inputs read plus outputs written by those ops, about
HBM traffic), GFLOPs (FlopCounterMode), MiB saved for backward (unique storages saved by autograd; the
model's parameters and buffers excluded, reported apart in the JSON), the top ops by bytes, the ratios to
mmdetection, and census s: the wall seconds of the instrumented step on this CPU (how long a run takes, no cost).

Our models run in this process in both training paths: static shapes (`model.static_shapes = True`, fixed-size and
sync-free, the CUDA default) and compacted (`False`, the CPU default). The peers run in their own environment
(benchmarks/step_census_peer.py under --peer-python), reading the batch this script writes: 2 images of --size
(seeded, integer values 0-255, RGB), --objects few (3 boxes per image) or many (30), labels 0-based, box-filling
bitmasks. Every model normalises the same pixels inside its step: ours in its transform, mmdetection in its data
preprocessor (from BGR, as its loader gives images), torchvision in its transform (from 0-1, resize disabled);
the sizes are multiples of 32, so no model pads.

    python benchmarks/step_census.py --size 512x768 --objects few --json census.json \\
        --peer-python /work/peers/venv/bin/python
    python benchmarks/step_census.py --size 800x1216 --objects many --precision bf16 --peers none
    python benchmarks/step_census.py --config shapes_faster_rcnn_s14 --size 64x96 --peers none   # a quick look

Peers' environment (outside the project, never one of its dependencies):
    python -m venv /work/peers/venv
    /work/peers/venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/peers/venv/bin/pip install mmengine==0.10.7 mmcv-lite==2.1.0 pycocotools shapely scipy terminaltables
    /work/peers/venv/bin/pip install --no-deps mmdet==3.3.0
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the repository root, for an in-place build
from census_counters import run_census  # noqa: E402

from detection.build import build_model  # noqa: E402
from detection.configs import get_config  # noqa: E402

CONFIGS = {
    "faster": "faster_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco",
    "mask": "mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco",
}
OBJECTS = {"few": 3, "many": 30}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
PEER_SCRIPT = Path(__file__).resolve().parent / "step_census_peer.py"


def make_batch(batch, size, objects, num_classes=80, seed=0):
    """Seeded images [B, 3, H, W] (float, integer values 0-255, RGB) and per image `objects` boxes (xyxy, at least
    16 px a side), 0-based labels and uint8 masks filling the boxes."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    images = torch.randint(0, 256, (batch, 3, h, w), generator=g).float()
    boxes, labels, masks = [], [], []
    for _ in range(batch):
        xy = torch.rand(objects, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 16 + torch.rand(objects, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        b = torch.cat([xy, (xy + wh).minimum(torch.tensor([w - 1.0, h - 1.0]))], 1).round()
        m = torch.zeros(objects, h, w, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(b.long().tolist()):
            m[i, y1:y2, x1:x2] = 1
        boxes.append(b)
        labels.append(torch.randint(0, num_classes, (objects,), generator=g))
        masks.append(m)
    return {"images": images, "boxes": boxes, "labels": labels, "masks": masks, "num_classes": num_classes}


def census_ours(config_name, static, batch, precision):
    """Census of our model built from `config_name`, static shapes or compacted, on `batch`."""
    torch.manual_seed(0)
    cfg = get_config(config_name).model
    model = build_model(cfg).train()
    model.static_shapes = static
    with_masks = cfg.roi_head.mask_head is not None
    images = list(batch["images"])
    targets = []
    for i in range(len(images)):
        target = {"boxes": batch["boxes"][i], "labels": batch["labels"][i]}
        if with_masks:
            target["masks"] = batch["masks"][i]
        targets.append(target)
    dtype = PRECISIONS[precision]

    def forward():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            return sum(model(images, targets).values())

    torch.manual_seed(0)
    return run_census(forward, model)


def census_peers(peer_python, batch_path, rows, precision):
    """Run step_census_peer.py under `peer_python` and return its rows."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "peers.json")
        cmd = [
            peer_python,
            str(PEER_SCRIPT),
            "--batch",
            batch_path,
            "--rows",
            rows,
            "--precision",
            precision,
            "--json",
            out,
        ]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the project's environment
        subprocess.run(cmd, check=True, env=env)
        with open(out) as f:
            return json.load(f)


def ratio(value, reference):
    return f"{value / reference:.2f}" if reference else "-"


def markdown(rows):
    """The census table and the top ops of each row, as markdown."""
    mmdet = {r["model"]: r for r in rows if r["impl"] == "mmdet"}
    lines = [
        "| model | implementation | ops | GB moved | GFLOPs | MiB saved | ops / mmdet | GB / mmdet | saved / mmdet "
        "| census s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = mmdet.get(r["model"])
        ratios = [ratio(r[k], ref[k]) if ref else "-" for k in ("ops", "gb_moved", "saved_mb")]
        lines.append(
            f"| {r['model']} | {r['impl']} | {r['ops']} | {r['gb_moved']:.1f} | {r['gflops']:.0f} "
            f"| {r['saved_mb']:.0f} | {' | '.join(ratios)} | {r['seconds']:.0f} |"
        )
    lines += ["", "Top ops by bytes moved (op: count, GB):", ""]
    for r in rows:
        top = "; ".join(f"{t['op'].replace('aten::', '')} {t['count']}, {t['gb']:.1f}" for t in r["top_ops"])
        lines.append(f"- {r['model']} {r['impl']}: {top}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="800x1216", help="HxW of the 2 images (multiples of 32)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--objects", default="few", choices=sorted(OBJECTS))
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))
    parser.add_argument("--models", default="faster,mask", help=f"of {sorted(CONFIGS)}")
    parser.add_argument("--config", default="", help="one of our configs instead of --models (peers: none)")
    parser.add_argument("--paths", default="static,compacted", help="our training paths to count")
    parser.add_argument("--peers", default="mmdet,torchvision", help="mmdet, torchvision, or none")
    parser.add_argument("--peer-python", default="/work/peers/venv/bin/python")
    parser.add_argument("--json", default="", help="write the rows here")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    models = {"custom": args.config} if args.config else {m: CONFIGS[m] for m in args.models.split(",")}
    num_classes = get_config(next(iter(models.values()))).model.roi_head.stages[0].box_head.num_classes
    batch = make_batch(args.batch, size, OBJECTS[args.objects], num_classes)

    rows = []
    for kind, config_name in models.items():
        for path in args.paths.split(","):
            if path not in ("static", "compacted"):
                raise SystemExit(f"--paths: expected static and/or compacted, got {path!r}")
            result = census_ours(config_name, path == "static", batch, args.precision)
            rows.append({"model": kind, "impl": f"ours {path}", "torch": torch.__version__, **result})
            print(
                f"{kind} ours {path}: {result['ops']} ops, {result['gb_moved']:.1f} GB, {result['seconds']:.0f} s",
                flush=True,
            )
    peers = [] if args.peers == "none" or args.config else args.peers.split(",")
    if peers:
        with tempfile.TemporaryDirectory() as tmp:
            batch_path = os.path.join(tmp, "batch.pt")
            torch.save(batch, batch_path)
            specs = ",".join(f"{peer}:{kind}" for peer in peers for kind in models)
            rows += census_peers(args.peer_python, batch_path, specs, args.precision)

    print(
        f"\n{args.batch} x {size[0]}x{size[1]}, {args.objects} objects ({OBJECTS[args.objects]} per image), "
        f"{args.precision}\n"
    )
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
