"""Peer side of benchmarks/step_census.py: the census of one training step of mmdetection 3.3 and torchvision
detectors on the batch that step_census.py wrote. Runs with the peers' own python (not the project's environment;
the project's extension is never imported here):

    /work/peers/venv/bin/python benchmarks/step_census_peer.py --batch batch.pt --rows mmdet:faster,torchvision:mask \\
        --precision fp32 --json peers.json

Peers' environment: torch 2.14.1, torchvision 0.29.1, mmengine, mmcv-lite 2.1.0 (mmcv without compiled ops) and
mmdet 3.3.0. What is changed to run them on one CPU process, and nothing else:
- mmcv-lite has no compiled ops: mmcv's NMS kernel (mmcv._ext.nms, under mmcv's own nms/batched_nms Python code)
  is torchvision.ops.nms, and mmcv.ops.RoIAlign / roi_align are torchvision.ops.roi_align (forward and backward,
  the same aligned=True, adaptive-sampling RoIAlign); any other compiled op raises.
- SyncBN in the mmdetection configs becomes BN (one process; the project's single-process SyncBatchNorm is BN too);
  the backbone's pretrained init_cfg is dropped (random weights, mmdetection's own init_weights).
- torchvision's GeneralizedRCNNTransform keeps its normalisation and batching but not its resize (identity): the
  images already have the batch's size, as they have for the other models.
"""

import argparse
import json
import logging
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from census_counters import run_census  # noqa: E402

MMDET_CONFIGS = {
    "faster": "resnest/faster-rcnn_s50_fpn_syncbn-backbone+head_ms-range-1x_coco.py",
    "mask": "resnest/mask-rcnn_s50_fpn_syncbn-backbone+head_ms-1x_coco.py",
}
TORCHVISION_MODELS = {"faster": "fasterrcnn_resnet50_fpn", "mask": "maskrcnn_resnet50_fpn"}


def install_mmcv_ops():
    """Back mmcv's compiled ops with torchvision.ops before mmcv.ops is imported (see the module docstring)."""
    if "mmcv._ext" in sys.modules:
        return
    import torchvision

    ext = types.ModuleType("mmcv._ext")

    def nms(bboxes, scores, iou_threshold, offset=0):
        if offset != 0:
            raise NotImplementedError("nms with offset != 0")
        return torchvision.ops.nms(bboxes, scores, iou_threshold)

    def missing(name):
        if name.startswith("_"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name} (no compiled ops in mmcv-lite)")

        return unavailable

    ext.nms = nms
    ext.__getattr__ = missing
    sys.modules["mmcv._ext"] = ext

    import mmcv.ops

    def roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=0, pool_mode="avg", aligned=True):
        if pool_mode != "avg":
            raise NotImplementedError("roi_align pool_mode='max'")
        return torchvision.ops.roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)

    class RoIAlign(mmcv.ops.RoIAlign):
        def __init__(self, *args, **kwargs):
            kwargs["use_torchvision"] = True
            super().__init__(*args, **kwargs)

    mmcv.ops.RoIAlign = RoIAlign
    mmcv.ops.roi_align = roi_align
    sys.modules["mmcv.ops.roi_align"].roi_align = roi_align
    sys.modules["mmcv.ops.roi_align"].RoIAlign = RoIAlign

    import mmdet.structures.mask.structures as mask_structures  # BitmapMasks.crop_and_resize (mask targets)

    mask_structures.roi_align = roi_align


def syncbn_to_bn(node):
    """A copy of an mmengine config node with every norm_cfg type SyncBN replaced by BN."""
    if isinstance(node, dict):
        out = {k: syncbn_to_bn(v) for k, v in node.items()}
        if out.get("type") == "SyncBN":
            out["type"] = "BN"
        return out
    if isinstance(node, (list, tuple)):
        return type(node)(syncbn_to_bn(v) for v in node)
    return node


def mmdet_model(kind):
    import mmdet
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config, ConfigDict

    register_all_modules()
    from mmengine.logging import MMLogger

    MMLogger.get_current_instance().setLevel(logging.WARNING)  # init_weights logs every parameter
    path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", MMDET_CONFIGS[kind])
    cfg = ConfigDict(syncbn_to_bn(Config.fromfile(path).model.to_dict()))
    cfg.backbone.init_cfg = None
    model = MODELS.build(cfg)
    model.init_weights()
    return model.train()


def mmdet_data(batch, with_masks):
    """mmdetection's data: BGR images (as its loader gives them) and DetDataSamples with gt_instances."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    images = batch["images"]
    h, w = images.shape[-2:]
    samples = []
    for i in range(images.shape[0]):
        sample = DetDataSample(
            metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1.0, 1.0), flip=False)
        )
        gt = InstanceData(bboxes=batch["boxes"][i], labels=batch["labels"][i])
        if with_masks:
            gt.masks = BitmapMasks(batch["masks"][i].numpy(), h, w)
        sample.gt_instances = gt
        samples.append(sample)
    return {"inputs": [im.flip(0) for im in images], "data_samples": samples}


def mmdet_total_loss(losses):
    """mmdetection's parse_losses without its logging: the sum over loss* entries of their means."""
    total = 0
    for name, value in losses.items():
        if "loss" in name:
            total = total + (value.mean() if isinstance(value, torch.Tensor) else sum(v.mean() for v in value))
    return total


def census_mmdet(kind, batch, autocast):
    model = mmdet_model(kind)
    data = mmdet_data(batch, kind == "mask")

    def forward():
        with autocast():
            processed = model.data_preprocessor(data, training=True)
            return mmdet_total_loss(model(**processed, mode="loss"))

    return run_census(forward, model)


def census_torchvision(kind, batch, autocast):
    from torchvision.models import detection

    num_classes = int(batch["num_classes"])
    model = getattr(detection, TORCHVISION_MODELS[kind])(
        weights=None, weights_backbone=None, num_classes=num_classes + 1
    ).train()
    model.transform.resize = lambda image, target: (image, target)  # already at the batch's size
    images = [im / 255 for im in batch["images"]]
    targets = []
    for i in range(len(images)):
        target = {"boxes": batch["boxes"][i], "labels": batch["labels"][i] + 1}  # 1-based: 0 is background
        if kind == "mask":
            target["masks"] = batch["masks"][i]
        targets.append(target)

    def forward():
        with autocast():
            return sum(model(images, targets).values())

    return run_census(forward, model)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", required=True, help=".pt file written by step_census.py")
    parser.add_argument("--rows", default="mmdet:faster,mmdet:mask,torchvision:faster,torchvision:mask")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--json", required=True, help="where to write the rows")
    args = parser.parse_args(argv)
    batch = torch.load(args.batch, weights_only=True)
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def autocast():
        return torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)

    rows = []
    for spec in args.rows.split(","):
        framework, kind = spec.split(":")
        torch.manual_seed(0)
        if framework == "mmdet":
            install_mmcv_ops()
            result = census_mmdet(kind, batch, autocast)
            import mmdet

            version = f"mmdet {mmdet.__version__}"
        elif framework == "torchvision":
            import torchvision

            result = census_torchvision(kind, batch, autocast)
            version = f"torchvision {torchvision.__version__}"
        else:
            raise SystemExit(f"--rows: unknown framework {framework!r}")
        rows.append({"model": kind, "impl": framework, "version": version, "torch": torch.__version__, **result})
        print(f"{spec}: {result['ops']} ops, {result['gb_moved']:.1f} GB, {result['seconds']:.0f} s", flush=True)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
