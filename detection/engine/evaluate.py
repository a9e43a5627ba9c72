"""COCO evaluation: run the model over a loader, convert outputs to COCO results (xywh boxes, original category
ids, RLE masks), gather them across ranks, score bbox and segm with COCOeval and print the 12-number summary.
"""

import contextlib
import io
import json
import logging

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.cocoeval import COCOeval

from .distributed import all_gather_objects, unwrap_model
from .metrics import progress_bar
from .resources import InferenceTimer

logger = logging.getLogger(__name__)

# The layout of COCOeval.summarize(), used when there is nothing to evaluate.
_SUMMARY_LINES = [
    f" {'Average ' + kind:<18} ({short}) @[ IoU={iou:<9} | area={area:>6s} | maxDets={dets:>3d} ] = {{:0.3f}}"
    for kind, short, iou, area, dets in [
        ("Precision", "AP", "0.50:0.95", "all", 100), ("Precision", "AP", "0.50", "all", 100),
        ("Precision", "AP", "0.75", "all", 100), ("Precision", "AP", "0.50:0.95", "small", 100),
        ("Precision", "AP", "0.50:0.95", "medium", 100), ("Precision", "AP", "0.50:0.95", "large", 100),
        ("Recall", "AR", "0.50:0.95", "all", 1), ("Recall", "AR", "0.50:0.95", "all", 10),
        ("Recall", "AR", "0.50:0.95", "all", 100), ("Recall", "AR", "0.50:0.95", "small", 100),
        ("Recall", "AR", "0.50:0.95", "medium", 100), ("Recall", "AR", "0.50:0.95", "large", 100),
    ]
]
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def to_coco_results(output: dict, image_id: int, cat_ids: list[int]) -> list[dict]:
    """One image's model output → COCO result dicts.

    output: `boxes` float [N, 4] xyxy in original-image pixels, `scores` float [N], `labels` int64 [N] 0-based,
    optionally `masks` uint8 [N, H, W] (binary, original size). `cat_ids[label]` is the COCO category id.
    """
    boxes = output["boxes"].detach().float().cpu()
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist() if len(boxes) else []
    rles = None
    if "masks" in output:
        masks = output["masks"].detach().cpu().numpy().astype(np.uint8)
        if masks.ndim == 4:  # [N, 1, H, W]
            masks = masks[:, 0]
        rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
    results = []
    for i, (box, score, label) in enumerate(zip(xywh, scores, labels)):
        result = {"image_id": int(image_id), "category_id": int(cat_ids[label]),
                  "bbox": [round(v, 2) for v in box], "score": round(float(score), 5)}
        if rles is not None:
            result["segmentation"] = {"size": list(rles[i]["size"]), "counts": rles[i]["counts"].decode("ascii")}
        results.append(result)
    return results


@torch.no_grad()
def run_inference(model, loader, device: torch.device, cat_ids: list[int], amp: bool = False,
                  progress: bool = True, timer: InferenceTimer | None = None) -> dict[int, list[dict]]:
    """COCO results of this rank's shard, keyed by image id (images that failed to load are absent). `timer`
    times each model call (images per second)."""
    model.eval()
    results: dict[int, list[dict]] = {}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
    for images, targets, _ in progress_bar(loader, progress, desc="eval", leave=False):
        if not images:
            continue
        images = [image.to(device, non_blocking=True) for image in images]
        with autocast, timer.measure(len(images)) if timer is not None else contextlib.nullcontext():
            outputs = model(images, original_sizes=[tuple(t["orig_size"]) for t in targets])
        for output, target in zip(outputs, targets):
            results[int(target["image_id"])] = to_coco_results(output, target["image_id"], cat_ids)
    return results


def coco_summary(coco_gt, results: list[dict], image_ids: list[int], iou_type: str) -> tuple[list[float], str]:
    """COCOeval on `image_ids` → (12 stats, printed summary text). No detections → all zeros."""
    if iou_type == "segm":  # areas must come from the masks, not the boxes
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    if not results:  # COCO.loadRes cannot take an empty list; nothing detected scores 0 everywhere
        return [0.0] * 12, "\n".join(_SUMMARY_LINES).format(*([0.0] * 12)) + f"\n(no {iou_type} detections)"
    with contextlib.redirect_stdout(io.StringIO()) as text:
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    summary = "\n".join(line for line in text.getvalue().splitlines() if line.startswith(" Average"))
    return [float(s) for s in evaluator.stats], summary


def evaluate(model, loader, device: torch.device, *, with_masks: bool, amp: bool = False, out_path: str | None = None,
             is_main: bool = True, progress: bool = True,
             log=logger.info, timer: InferenceTimer | None = None) -> dict[str, dict[str, float]]:
    """Evaluate on `loader` (a CocoDetection test loader, possibly sharded). Every rank returns the same metrics:
    {"bbox": {"AP": ..., ...}, "segm": {...}}; rank 0 prints the summaries and writes `out_path`."""
    dataset = loader.dataset
    cat_ids = dataset.cat_ids
    shard = run_inference(unwrap_model(model), loader, device, cat_ids, amp=amp, progress=is_main and progress,
                          timer=timer)
    merged: dict[int, list[dict]] = {}
    for part in all_gather_objects(shard):  # padded shards repeat images: the dict de-duplicates them
        merged.update(part)
    results = [r for image_id in sorted(merged) for r in merged[image_id]]
    missing = len(dataset) - len(merged)
    if missing and is_main:
        log(f"evaluation: {missing} image(s) could not be read and were left out of the evaluation")
    metrics = {}
    if is_main:
        if out_path:
            with open(out_path, "w") as f:
                json.dump(results, f)
            log(f"wrote {len(results)} detections to {out_path}")
        for iou_type in ("bbox", "segm") if with_masks else ("bbox",):
            stats, summary = coco_summary(dataset.coco, results, list(merged), iou_type)
            log(f"{iou_type} evaluation on {len(merged)} images:\n{summary}")
            metrics[iou_type] = dict(zip(STAT_NAMES, stats))
    return all_gather_objects(metrics)[0]
