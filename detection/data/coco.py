"""COCO-format detection dataset read through pycocotools.

Boxes go from COCO xywh to xyxy pixels; category ids map to contiguous 0-based labels (sorted by id) and back for
results. Crowd annotations (`iscrowd=1`) are dropped from the training targets; they stay in the COCO ground truth,
where COCOeval treats them as ignore regions. Polygon and RLE (compressed or not) masks are decoded with
pycocotools.mask.

Bad data never stops a run: a missing file, an annotation with a degenerate box (w or h < 1 after clipping to the
image) or an unusable mask, and — for training with `filter_empty_gt` — an image without any annotation of a known
category are dropped when the dataset is built (as in mmdetection, an image whose annotations are all crowd or
unusable is kept, as a background-only image); a truncated or undecodable image is found only when read, and then
the sample is returned as None (the collate function drops and counts it). Each case is counted and reported in
one log line.
"""

import logging
import os
import random
from collections import Counter

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from .annotations import load_coco_api
from .polygons import PolygonMasks

logger = logging.getLogger(__name__)


def decode_segmentation(segm, height: int, width: int) -> np.ndarray | None:
    """COCO segmentation (list of polygons, uncompressed or compressed RLE) → uint8 [height, width], or None
    when no usable polygon is given (a polygon needs at least 3 points)."""
    if isinstance(segm, list):
        polygons = usable_polygons(segm)
        if not polygons:
            return None
        rle = mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        rle = mask_util.frPyObjects(segm, height, width)
    elif isinstance(segm, dict):
        rle = segm
    else:
        return None
    return mask_util.decode(rle).astype(np.uint8)


def usable_polygons(segm: list) -> list[list[float]]:
    """The polygons of a COCO polygon segmentation that have at least 3 points."""
    return [p for p in segm if len(p) >= 6 and len(p) % 2 == 0]


def _usable_segmentation(segm) -> bool:
    if isinstance(segm, list):
        return any(len(p) >= 6 and len(p) % 2 == 0 for p in segm)
    return isinstance(segm, dict) and "counts" in segm and "size" in segm


def load_rgb(path: str) -> torch.Tensor:
    """Decode an image with Pillow as RGB → uint8 [3, H, W] (contiguous). Raises OSError on missing, truncated or
    undecodable files (Pillow's default refuses truncated JPEGs)."""
    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB"))  # read-only: Pillow's buffer
    return torch.from_numpy(array.transpose(2, 0, 1).copy())  # one copy, writable and contiguous


class CocoDetection(torch.utils.data.Dataset):
    """Samples are (image [3, H, W] 0–255, target dict) or None for an unreadable image; the image is uint8 where
    the transform leaves integer pixels (no transform, the mmcv resize, flips) and float32 otherwise.

    target: `boxes` float32 [N, 4] xyxy in the transformed image's pixels, `labels` int64 [N] 0-based,
    `masks` uint8 [N, H, W] when `with_masks` (with `poly2mask=False`, an image whose masks are all polygons gets
    `PolygonMasks` instead, as mmdetection's poly2mask=False; RLE masks keep the bitmap), `image_id` int,
    `orig_size` (height, width) before transforms.
    `train=True` applies `filter_empty_gt` and `min_size`; evaluation keeps every readable image.
    """

    def __init__(self, ann_file: str, image_dir: str, transform=None, with_masks: bool = False, train: bool = False,
                 filter_empty_gt: bool = True, min_size: int = 0, seed: int = 0, poly2mask: bool = True):
        self.coco = load_coco_api(ann_file)  # checks the file's layout, errors name it
        self.image_dir = image_dir
        self.transform = transform
        self.with_masks = with_masks
        self.poly2mask = poly2mask
        self.seed = seed
        self.epoch = 0
        self.cat_ids = sorted(self.coco.getCatIds())
        self.cat_id_to_label = {cat_id: i for i, cat_id in enumerate(self.cat_ids)}
        self.class_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.skipped = Counter()
        self.records = []
        for image_id in sorted(self.coco.getImgIds()):
            record = self._build_record(image_id, train, filter_empty_gt, min_size)
            if record is not None:
                self.records.append(record)
        if self.skipped:
            details = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
            logger.warning("%s: kept %d images; skipped %s", os.path.basename(ann_file), len(self.records), details)

    def _build_record(self, image_id: int, train: bool, filter_empty_gt: bool, min_size: int) -> dict | None:
        info = self.coco.imgs[image_id]
        height, width = int(info["height"]), int(info["width"])
        path = os.path.join(self.image_dir, info["file_name"])
        if not os.path.isfile(path):
            self.skipped["missing image file"] += 1
            return None
        if train and min(height, width) < min_size:
            self.skipped["image smaller than min_size"] += 1
            return None
        anns = []
        # mmdetection's filter_empty_gt: an image is kept when any annotation of a known category refers to it, even
        # when all of them are crowd (ignore regions) or unusable: it trains as a background-only image.
        annotated = False
        for ann in self.coco.imgToAnns.get(image_id, []):
            annotated = annotated or ann.get("category_id") in self.cat_id_to_label
            if ann.get("iscrowd", 0):
                self.skipped["crowd annotation (ignore region)"] += 1
                continue
            if ann.get("category_id") not in self.cat_id_to_label:
                self.skipped["unknown category"] += 1
                continue
            x, y, w, h = ann["bbox"]
            x1, y1 = max(0.0, x), max(0.0, y)
            x2, y2 = min(float(width), x + w), min(float(height), y + h)
            if x2 - x1 < 1 or y2 - y1 < 1:
                self.skipped["degenerate box"] += 1
                continue
            if self.with_masks and not _usable_segmentation(ann.get("segmentation")):
                self.skipped["unusable mask"] += 1
                continue
            anns.append({"box": [x1, y1, x2, y2], "label": self.cat_id_to_label[ann["category_id"]],
                         "segmentation": ann.get("segmentation")})
        if train and filter_empty_gt and not annotated:
            self.skipped["image without annotations"] += 1
            return None
        return {"image_id": image_id, "path": path, "height": height, "width": width, "anns": anns}

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation randomness is a function of (seed, epoch, index); set before creating the iterator."""
        self.epoch = epoch

    def aspect_groups(self) -> list[int]:
        """0 for landscape (w >= h), 1 for portrait, per record: the key of aspect-ratio grouping."""
        return [0 if r["width"] >= r["height"] else 1 for r in self.records]

    def __getitem__(self, index: int):
        record = self.records[index]
        try:
            image = load_rgb(record["path"])
        except (OSError, ValueError, SyntaxError) as err:  # Pillow raises these for broken files
            logger.warning("skipping unreadable image %s: %s", record["path"], err)
            return None
        if tuple(image.shape[1:]) != (record["height"], record["width"]):
            logger.warning("skipping %s: decoded size %s differs from annotated (%d, %d)", record["path"],
                           tuple(image.shape[1:]), record["height"], record["width"])
            return None
        target = self._target(record)
        if self.transform is not None:
            rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
            image, target = self.transform(image, target, rng)
        return image, target

    def _target(self, record: dict) -> dict:
        height, width, anns = record["height"], record["width"], record["anns"]
        target = {
            "boxes": torch.tensor([a["box"] for a in anns], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([a["label"] for a in anns], dtype=torch.int64),
            "image_id": record["image_id"],
            "orig_size": (height, width),
        }
        if self.with_masks and not self.poly2mask and all(isinstance(a["segmentation"], list) for a in anns):
            target["masks"] = PolygonMasks([usable_polygons(a["segmentation"]) for a in anns], height, width)
        elif self.with_masks:
            masks = np.zeros((len(anns), height, width), dtype=np.uint8)
            for i, ann in enumerate(anns):
                decoded = decode_segmentation(ann["segmentation"], height, width)
                if decoded is not None:
                    masks[i] = decoded
            target["masks"] = torch.from_numpy(masks)
        return target
