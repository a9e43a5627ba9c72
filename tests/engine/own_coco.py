"""A small COCO-format dataset "of the user's own", as a new user brings it: 30 train / 10 val images of mixed
sizes, category ids 3/7/11 (not 1..K, listed out of order), polygon, compressed-RLE and uncompressed-RLE masks,
crowd annotations, empty images, one image whose only box is degenerate, one missing file and one truncated JPEG.

Of the 30 training images, 26 are kept when the dataset is built (3 empty and 1 missing file left out; the one whose
only box is degenerate is kept as a background-only image, as in mmdetection); the truncated one is found only when
read. 26 is not a multiple of 4, so the last batch of an epoch is short at 4 images per batch.
"""

import json
import os

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image, ImageDraw

CATEGORIES = [{"id": 11, "name": "bird"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
SIZES = [(64, 48), (48, 64), (72, 56), (56, 56)]  # (width, height)
EMPTY_TRAIN, DEGENERATE_TRAIN, MISSING_TRAIN, TRUNCATED_TRAIN = (4, 11, 19), 7, 23, 15
EMPTY_VAL = 5
USABLE_TRAIN = 26


def _objects(rng: np.random.Generator, width: int, height: int, count: int) -> list[dict]:
    objects = []
    for _ in range(count):
        w, h = rng.integers(14, width // 2), rng.integers(14, height // 2)
        x, y = rng.integers(0, width - w), rng.integers(0, height - h)
        if rng.random() < 0.5:
            polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
        else:
            polygon = [x + w / 2, y, x + w, y + h, x, y + h]
        objects.append({"category_id": CATEGORIES[int(rng.integers(3))]["id"], "polygon": [float(v) for v in polygon]})
    return objects


def _segmentation(polygon: list[float], width: int, height: int, style: int):
    if style == 0:
        return [polygon]
    rle = mask_util.merge(mask_util.frPyObjects([polygon], height, width))
    if style == 1:
        return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    mask = mask_util.decode(rle).flatten(order="F")  # uncompressed RLE: run lengths, column-major, from 0s
    changes = np.flatnonzero(np.diff(np.concatenate([[0], mask, [2]]))) if mask.size else []
    counts = np.diff(np.concatenate([[0], changes]))[: len(changes)].tolist()
    return {"size": [height, width], "counts": [int(c) for c in counts]}


def _split(root: str, split: str, count: int, seed: int, empty: tuple[int, ...]) -> str:
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, split)
    os.makedirs(folder, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        width, height = SIZES[index % len(SIZES)]
        image_id = 100 + index
        name = f"{split}_{index:03d}.jpg"
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        canvas = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 80, 3)))
        draw = ImageDraw.Draw(canvas)
        objects = [] if index in empty else _objects(rng, width, height, 1 + index % 2)
        for k, obj in enumerate(objects):
            colour = {3: (230, 60, 60), 7: (60, 230, 60), 11: (60, 60, 230)}[obj["category_id"]]
            draw.polygon(obj["polygon"], fill=colour)
            xs, ys = obj["polygon"][0::2], obj["polygon"][1::2]
            bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": obj["category_id"],
                                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0,
                                "segmentation": _segmentation(obj["polygon"], width, height, (index + k) % 3)})
        if split == "train" and index == DEGENERATE_TRAIN:
            annotations = [a for a in annotations if a["image_id"] != image_id]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 3,
                                "bbox": [10.0, 10.0, 0.5, 20.0], "area": 10.0, "iscrowd": 0,
                                "segmentation": [[10, 10, 10.5, 10, 10.5, 30]]})
        if index % 6 == 1 and objects:  # a crowd region next to ordinary objects
            polygon = [0.0, 0.0, 12.0, 0.0, 12.0, 12.0, 0.0, 12.0]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 7,
                                "bbox": [0.0, 0.0, 12.0, 12.0], "area": 144.0, "iscrowd": 1,
                                "segmentation": _segmentation(polygon, width, height, 1)})
        canvas.save(os.path.join(folder, name), quality=90)
    if split == "train":
        os.remove(os.path.join(folder, f"train_{MISSING_TRAIN:03d}.jpg"))
        path = os.path.join(folder, f"train_{TRUNCATED_TRAIN:03d}.jpg")
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    ann_path = os.path.join(root, "annotations", f"{split}.json")
    os.makedirs(os.path.dirname(ann_path), exist_ok=True)
    with open(ann_path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return ann_path


def make_own_coco(root: str) -> str:
    """Write the dataset under `root` (annotations/{train,val}.json, train/, val/); returns `root`."""
    _split(root, "train", 30, seed=1, empty=EMPTY_TRAIN)
    _split(root, "val", 10, seed=2, empty=(EMPTY_VAL,))
    return root


DATA_OVERRIDES = ["data.dataset=coco", "data.train_ann=annotations/train.json", "data.train_images=train",
                  "data.val_ann=annotations/val.json", "data.val_images=val"]
