"""The embedded default dataset: synthetic "shapes" images written as JPEG files plus COCO annotation files, so
training and evaluation read it through the same COCO code path as real data.

Each image has a textured gradient background and 1–`max_objects` shapes (circle, square, triangle, star) of random
colour, size, rotation and texture, drawn in order so later shapes occlude earlier ones (an earlier shape keeps at
least half its area visible). Every shape is a polygon rasterised by pycocotools, and its pixels are painted from
that same raster, so annotations are exact: an unoccluded instance is stored as its polygon, an occluded one as the
RLE of its visible mask; boxes are the tight boxes of the visible masks.

Everything is a function of (seed, split, image index); JPEG bytes are identical across runs with the same Pillow.
`prepare_shapes` regenerates only when the files are missing or the parameters (kept in meta.json) changed.
"""

import json
import logging
import os
from dataclasses import asdict, dataclass

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

logger = logging.getLogger(__name__)

CLASSES = ("circle", "square", "triangle", "star")
GENERATOR_VERSION = 1
DEFAULT_ROOT = os.path.join("~", ".cache", "resnest_cuda", "shapes")


@dataclass(frozen=True)
class ShapesParams:
    num_train: int = 600
    num_val: int = 100
    image_size: int = 128
    seed: int = 0
    max_objects: int = 4
    version: int = GENERATOR_VERSION


def shape_polygon(kind: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Vertices [V, 2] (x, y) of a shape centred at (cx, cy) with circumradius `radius`, rotated by `angle`."""
    if kind == "circle":
        count, radii = 40, np.full(40, radius)
    elif kind == "square":
        count, radii = 4, np.full(4, radius)
    elif kind == "triangle":
        count, radii = 3, np.full(3, radius)
    elif kind == "star":
        count, radii = 10, np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {CLASSES}")
    theta = angle + 2 * np.pi * np.arange(count) / count
    return np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], axis=1)


def rasterize(polygon: np.ndarray, size: int) -> np.ndarray:
    """Polygon [V, 2] → bool [size, size] with pycocotools' rasteriser (the one evaluation uses)."""
    rle = mask_util.frPyObjects([polygon.reshape(-1).tolist()], size, size)
    return mask_util.decode(rle)[:, :, 0].astype(bool)


def _texture(rng: np.random.Generator, size: int, colour: np.ndarray) -> np.ndarray:
    """A float [size, size, 3] fill: flat colour with noise, optionally modulated by stripes."""
    fill = np.broadcast_to(colour, (size, size, 3)).astype(np.float32)
    if rng.random() < 0.4:
        yy, xx = np.mgrid[0:size, 0:size]
        direction = rng.uniform(0, np.pi)
        period = rng.uniform(4, 10)
        stripes = np.sin((xx * np.cos(direction) + yy * np.sin(direction)) * 2 * np.pi / period)
        fill = fill * (1 + 0.25 * stripes[:, :, None])
    return fill + rng.normal(0, 6, size=(size, size, 3))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    start, end = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    ramp = np.linspace(0, 1, size)
    along = ramp[None, :] if rng.random() < 0.5 else ramp[:, None]
    image = start + (end - start) * along[:, :, None]
    return image + rng.normal(0, 8, size=(size, size, 3))


def _contrasting_colour(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
    for _ in range(50):
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - background_mean) > 90:
            return colour
    return 255 - background_mean


def _place_shapes(rng: np.random.Generator, size: int, max_objects: int, num_kinds: int) -> list[dict]:
    """Choose shapes (of the first `num_kinds` of CLASSES) so that each earlier shape keeps >= 50% of its area
    visible. Returns dicts with `label`, `polygon`, `full` and `visible` (bool masks)."""
    placed: list[dict] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            label = int(rng.integers(num_kinds))
            radius = rng.uniform(0.09, 0.25) * size
            cx, cy = rng.uniform(radius, size - radius, size=2)
            # Rounded as stored in the JSON, so the stored polygon rasterises to exactly these pixels.
            polygon = np.round(shape_polygon(CLASSES[label], cx, cy, radius, rng.uniform(0, 2 * np.pi)), 2)
            full = rasterize(polygon, size)
            if all((p["visible"] & ~full).sum() >= 0.5 * p["full"].sum() for p in placed):
                for p in placed:
                    p["visible"] = p["visible"] & ~full
                placed.append({"label": label, "polygon": polygon, "full": full, "visible": full.copy()})
                break
    return placed


def render_image(rng: np.random.Generator, size: int, max_objects: int,
                 num_kinds: int = len(CLASSES)) -> tuple[np.ndarray, list[dict]]:
    """One image uint8 [size, size, 3] and its instances (label, polygon, full and visible masks); the shapes are
    of the first `num_kinds` kinds of CLASSES; `max_objects` 0 draws the background alone."""
    image = _background(rng, size)
    shapes = _place_shapes(rng, size, max_objects, num_kinds) if max_objects > 0 else []
    for shape in shapes:
        colour = _contrasting_colour(rng, image.reshape(-1, 3).mean(0))
        image[shape["full"]] = _texture(rng, size, colour)[shape["full"]]
    return np.clip(image, 0, 255).round().astype(np.uint8), shapes


def _annotation(shape: dict, ann_id: int, image_id: int) -> dict:
    visible = shape["visible"]
    ys, xs = np.nonzero(visible)
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    if (visible == shape["full"]).all():
        segmentation = [shape["polygon"].reshape(-1).tolist()]
    else:
        rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
        segmentation = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    return {"id": ann_id, "image_id": image_id, "category_id": shape["label"] + 1, "iscrowd": 0,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(visible.sum()), "segmentation": segmentation}


def split_paths(split: str) -> tuple[str, str]:
    """(annotation file, image folder) of a split, relative to the dataset root."""
    return os.path.join("annotations", f"instances_{split}.json"), split


def generate_split(root: str, split: str, count: int, params: ShapesParams) -> None:
    """Write `count` JPEGs to root/<split>/ and root/annotations/instances_<split>.json."""
    split_id = {"train": 0, "val": 1}[split]
    os.makedirs(os.path.join(root, split), exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([params.seed, split_id, index])
        pixels, shapes = render_image(rng, params.image_size, params.max_objects)
        file_name = f"{index:06d}.jpg"
        Image.fromarray(pixels).save(os.path.join(root, split, file_name), quality=92)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": params.image_size,
                       "height": params.image_size})
        for shape in shapes:
            if shape["visible"].any():
                annotations.append(_annotation(shape, len(annotations) + 1, image_id))
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    _write_json(os.path.join(root, "annotations", f"instances_{split}.json"),
                {"images": images, "annotations": annotations, "categories": categories})


def _write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def prepare_shapes(root: str, params: ShapesParams) -> str:
    """Generate the dataset under `root` unless meta.json already records the same parameters and the annotation
    files exist. Returns the expanded root. meta.json is written last, so an interrupted generation reruns."""
    root = os.path.expanduser(root)
    meta_path = os.path.join(root, "meta.json")
    expected = asdict(params)
    annotation_files = [os.path.join(root, "annotations", f"instances_{s}.json") for s in ("train", "val")]
    if os.path.isfile(meta_path) and all(os.path.isfile(p) for p in annotation_files):
        with open(meta_path) as f:
            if json.load(f) == expected:
                return root
    logger.info("generating the shapes dataset in %s (%d train, %d val, %dpx, seed %d)", root, params.num_train,
                params.num_val, params.image_size, params.seed)
    if os.path.exists(meta_path):
        os.remove(meta_path)
    generate_split(root, "train", params.num_train, params)
    generate_split(root, "val", params.num_val, params)
    _write_json(meta_path, expected)
    return root
