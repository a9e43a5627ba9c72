"""Reading a COCO annotation file with errors that name the file and what is wrong, instead of a pycocotools
KeyError or a JSON traceback without a file name."""

import contextlib
import io
import json
import os

from pycocotools.coco import COCO

from ..engine.errors import MissingPathError, UserError

_REQUIRED = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def load_coco_api(path: str) -> COCO:
    """The pycocotools COCO object of the annotation file `path`, after checking its layout: a JSON object with
    `images`, `annotations` and `categories` lists whose entries have the fields COCO needs."""
    if not os.path.isfile(path):
        raise MissingPathError(f"annotation file not found: {path}")
    try:
        with open(path) as f:
            dataset = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"annotation file {path} is not valid JSON: {err}") from None
    check_coco_layout(dataset, path)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def check_coco_layout(dataset, path: str) -> None:
    """Raise a UserError naming the first missing section or field of a COCO-format dict."""
    if not isinstance(dataset, dict):
        raise UserError(f"annotation file {path}: expected a JSON object with images, annotations and categories, "
                        f"got a {type(dataset).__name__}")
    missing = [key for key in _REQUIRED if key not in dataset]
    if missing:
        raise UserError(f"annotation file {path} has no {', '.join(missing)} (a COCO file needs images, annotations "
                        "and categories lists)")
    for section, fields in _REQUIRED.items():
        entries = dataset[section]
        if not isinstance(entries, list):
            raise UserError(f"annotation file {path}: {section} must be a list, got {type(entries).__name__}")
        for i, entry in enumerate(entries):
            absent = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if absent:
                raise UserError(f"annotation file {path}: {section}[{i}] has no {', '.join(absent)}")
    if not dataset["categories"]:
        raise UserError(f"annotation file {path}: categories is empty (at least one category is needed)")
