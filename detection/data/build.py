"""The one place that turns a DataConfig into datasets, and where each dataset's files live.

A COCO-format dataset is read from `data.root` (or --data-root) and never written. The generated shapes dataset
lives in a cache folder of its own, one subfolder per parameter set (`shapes_params_key`): the base folder is
`data.root` / --data-root when given, else ~/.cache/resnest_cuda/shapes, and a base folder that holds anything
but such subfolders is refused rather than written into.
"""

import os
import re

from ..config import DataConfig
from ..engine.errors import MissingPathError, UserError
from .coco import CocoDetection
from .shapes import DEFAULT_ROOT, ShapesParams, prepare_shapes, split_paths
from .transforms import TestTransform, TrainTransform

DATASETS = ("coco", "shapes")
_SHAPES_KEY = re.compile(r"train\d+_val\d+_\d+px_seed\d+_max\d+_v\d+")


def shapes_params(cfg: DataConfig) -> ShapesParams:
    """Zero-valued size fields mean the generator's defaults."""
    defaults = ShapesParams()
    return ShapesParams(
        num_train=cfg.shapes_num_train or defaults.num_train,
        num_val=cfg.shapes_num_val or defaults.num_val,
        image_size=cfg.shapes_image_size or defaults.image_size,
        seed=cfg.shapes_seed,
    )


def shapes_params_key(params: ShapesParams) -> str:
    """The cache subfolder of one parameter set, e.g. train400_val100_96px_seed0_max4_v1."""
    return (f"train{params.num_train}_val{params.num_val}_{params.image_size}px_seed{params.seed}"
            f"_max{params.max_objects}_v{params.version}")


def resolve_root(cfg: DataConfig, data_root: str | None = None) -> str:
    """The folder the dataset is read from: for COCO `data_root` (the --data-root flag) or cfg.root; for shapes
    the parameter subfolder of the cache base (`data_root`, cfg.root, or the user cache)."""
    if cfg.dataset not in DATASETS:
        raise UserError(f"data.dataset: expected one of {DATASETS}, got {cfg.dataset!r}")
    if cfg.dataset == "shapes":
        base = os.path.expanduser(data_root or cfg.root or DEFAULT_ROOT)
        return os.path.join(base, shapes_params_key(shapes_params(cfg)))
    root = data_root or cfg.root
    if not root:
        raise UserError("no data root: set data.root or pass --data-root")
    return os.path.expanduser(root)


def check_shapes_base(base: str) -> None:
    """Refuse to generate into a folder that holds anything but shapes cache subfolders (the user cache itself,
    which may hold the flat layout of older versions, is always ours)."""
    if not os.path.isdir(base) or os.path.abspath(base) == os.path.abspath(os.path.expanduser(DEFAULT_ROOT)):
        return
    foreign = sorted(name for name in os.listdir(base) if not _SHAPES_KEY.fullmatch(name))
    if not foreign:
        return
    looks_coco = os.path.isdir(os.path.join(base, "annotations"))
    hint = ("it looks like a COCO-format dataset: train on it with data.dataset=coco and the data.train_ann / "
            "train_images / val_ann / val_images fields (README: 'Training on your own dataset')" if looks_coco
            else "give an empty or new folder, or leave --data-root out to use the cache")
    raise UserError(f"data root {base} holds other files ({', '.join(foreign[:5])}"
                    f"{', ...' if len(foreign) > 5 else ''}); this config generates the synthetic shapes dataset "
                    f"and never writes into such a folder: {hint}")


def prepare_data(cfg: DataConfig, data_root: str | None = None) -> str:
    """Return the dataset root, generating the shapes dataset there first when needed (call on one rank only)."""
    root = resolve_root(cfg, data_root)
    if cfg.dataset == "shapes":
        check_shapes_base(os.path.dirname(root))
        prepare_shapes(root, shapes_params(cfg))
    elif not os.path.isdir(root):
        raise MissingPathError(f"data root not found: {root} (set data.root or pass --data-root)")
    return root


def build_test_transform(cfg: DataConfig) -> TestTransform:
    """The test-time resize of `cfg`: evaluation and `detection.Detector` both use this one."""
    return TestTransform(cfg.test_scale, cfg.max_size, cfg.resize_mode)


def build_dataset(cfg: DataConfig, root: str, train: bool, seed: int = 0) -> CocoDetection:
    """Training split with the multi-scale/flip transform and the training filters, or the validation split with
    the test resize and every readable image kept. The shapes dataset has a fixed layout (shapes.split_paths);
    the train_ann / train_images / val_ann / val_images fields apply to COCO-format folders."""
    if train:
        transform = TrainTransform(cfg.train_scales, cfg.scale_mode, cfg.max_size, cfg.flip_prob, cfg.resize_mode)
        ann, images = cfg.train_ann, cfg.train_images
    else:
        transform = build_test_transform(cfg)
        ann, images = cfg.val_ann, cfg.val_images
    if cfg.dataset == "shapes":
        ann, images = split_paths("train" if train else "val")
    image_dir = os.path.join(root, images)
    if not os.path.isdir(image_dir):
        field = "train_images" if train else "val_images"
        raise MissingPathError(f"image folder not found: {image_dir} (data.root + data.{field})")
    dataset = CocoDetection(os.path.join(root, ann), image_dir, transform=transform, with_masks=cfg.with_masks,
                            train=train, filter_empty_gt=cfg.filter_empty_gt, min_size=cfg.min_size if train else 0,
                            seed=seed, poly2mask=cfg.poly2mask)
    if len(dataset) == 0:
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(dataset.skipped.items())) or "none"
        raise UserError(f"no usable {'training' if train else 'validation'} images in {os.path.join(root, ann)} "
                        f"(images from {image_dir}; skipped: {skipped})")
    return dataset
