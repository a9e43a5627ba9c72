"""Write a small example dataset in COCO format, laid out as a dataset of one's own usually is:

    OUT_DIR/annotations/train.json, OUT_DIR/annotations/val.json, OUT_DIR/train/*.jpg, OUT_DIR/val/*.jpg

    python -m detection.data.example_coco OUT_DIR [--train 80] [--val 20] [--size 128] [--seed 0]

The images are the shapes dataset's (detection/data/shapes.py) with three kinds of object, under category ids
that are not 1..K, listed out of order: 3 circle, 7 square, 11 triangle. As real data does, it holds one training
image without annotations and one crowd annotation (uncompressed RLE) on a training image. Polygons describe the
unoccluded objects, compressed RLE the occluded ones. Everything is a function of the arguments.
"""

import argparse
import json
import os
import sys

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from .shapes import _annotation, render_image

CATEGORY_IDS = (3, 7, 11)  # circle, square, triangle
CATEGORIES = [{"id": 11, "name": "triangle"}, {"id": 3, "name": "circle"}, {"id": 7, "name": "square"}]
EMPTY_TRAIN_INDEX = 5  # this training image has no annotation
CROWD_TRAIN_INDEX = 8  # this training image's first object is a crowd annotation


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """A bool [H, W] mask as COCO's uncompressed RLE: run lengths in column-major order, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1] if flat.size else 0]])))
    counts = np.diff(np.concatenate([[0], edges])).tolist()
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def write_split(out_dir: str, split: str, count: int, size: int, seed: int) -> dict:
    """Images to out_dir/<split>/ and out_dir/annotations/<split>.json; returns the annotation dict."""
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, 100 + (split == "val"), index])
        empty = split == "train" and index == EMPTY_TRAIN_INDEX
        pixels, shapes = render_image(rng, size, 0 if empty else 4, num_kinds=len(CATEGORY_IDS))
        image_id = 1000 + index
        file_name = f"{split}_{index:04d}.jpg"
        Image.fromarray(pixels).save(os.path.join(out_dir, split, file_name), quality=92)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for number, shape in enumerate(shapes):
            if not shape["visible"].any():
                continue
            ann = _annotation(shape, len(annotations) + 1, image_id)
            ann["category_id"] = CATEGORY_IDS[shape["label"]]
            if split == "train" and index == CROWD_TRAIN_INDEX and number == 0:
                ann["iscrowd"], ann["segmentation"] = 1, _uncompressed_rle(shape["visible"])
            annotations.append(ann)
    payload = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    with open(os.path.join(out_dir, "annotations", f"{split}.json"), "w") as f:
        json.dump(payload, f)
    return payload


def write_example_coco(out_dir: str, num_train: int = 80, num_val: int = 20, size: int = 128, seed: int = 0) -> str:
    """Write the example dataset to `out_dir` (created; files of the same names are replaced). Returns out_dir."""
    if num_train <= max(EMPTY_TRAIN_INDEX, CROWD_TRAIN_INDEX) or num_val < 1 or size < 32:
        raise ValueError(f"need more than {max(EMPTY_TRAIN_INDEX, CROWD_TRAIN_INDEX)} training images, at least one "
                         f"validation image and a size of at least 32 px; got {num_train}, {num_val}, {size}")
    write_split(out_dir, "train", num_train, size, seed)
    write_split(out_dir, "val", num_val, size, seed)
    return out_dir


def check_rle(rle: dict) -> int:
    """The pixel count of an uncompressed RLE (decoded by pycocotools, as training and evaluation read it)."""
    h, w = rle["size"]
    return int(mask_util.decode(mask_util.frPyObjects(rle, h, w)).sum())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detection.data.example_coco", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder to write (annotations/, train/, val/)")
    parser.add_argument("--train", type=int, default=80, help="training images (default 80)")
    parser.add_argument("--val", type=int, default=20, help="validation images (default 20)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        write_example_coco(args.out_dir, args.train, args.val, args.size, args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.train} train / {args.val} val images of {args.size} px, 3 categories (ids 3, 7, 11) to "
          f"{args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
