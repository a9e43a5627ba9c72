"""The one place that turns a DataConfig into datasets."""

import os

from ..config import DataConfig
from .coco import CocoDetection
from .shapes import DEFAULT_ROOT, ShapesParams, prepare_shapes, split_paths
from .transforms import TestTransform, TrainTransform


def shapes_params(cfg: DataConfig) -> ShapesParams:
    """Zero-valued size fields mean the generator's defaults."""
    defaults = ShapesParams()
    return ShapesParams(
        num_train=cfg.shapes_num_train or defaults.num_train,
        num_val=cfg.shapes_num_val or defaults.num_val,
        image_size=cfg.shapes_image_size or defaults.image_size,
        seed=cfg.shapes_seed,
    )


def resolve_root(cfg: DataConfig, data_root: str | None = None) -> str:
    """`data_root` (the --data-root flag) wins over cfg.root; an empty shapes root means the user cache."""
    root = data_root or cfg.root or (DEFAULT_ROOT if cfg.dataset == "shapes" else "")
    if not root:
        raise ValueError("no data root: set data.root or pass --data-root")
    return os.path.expanduser(root)


def prepare_data(cfg: DataConfig, data_root: str | None = None) -> str:
    """Return the dataset root, generating the shapes dataset there first when needed (call on one rank only)."""
    if cfg.dataset not in ("coco", "shapes"):
        raise ValueError(f"data.dataset must be 'coco' or 'shapes', got {cfg.dataset!r}")
    root = resolve_root(cfg, data_root)
    if cfg.dataset == "shapes":
        prepare_shapes(root, shapes_params(cfg))
    return root


def build_test_transform(cfg: DataConfig) -> TestTransform:
    """The test-time resize of `cfg`: evaluation and `detection.Detector` both use this one."""
    return TestTransform(cfg.test_scale, cfg.max_size)


def build_dataset(cfg: DataConfig, root: str, train: bool, seed: int = 0) -> CocoDetection:
    """Training split with the multi-scale/flip transform and the training filters, or the validation split with
    the test resize and every readable image kept. The shapes dataset has a fixed layout (shapes.split_paths);
    the train_ann / train_images / val_ann / val_images fields apply to COCO-format folders."""
    if train:
        transform = TrainTransform(cfg.train_scales, cfg.scale_mode, cfg.max_size, cfg.flip_prob)
        ann, images = cfg.train_ann, cfg.train_images
    else:
        transform = build_test_transform(cfg)
        ann, images = cfg.val_ann, cfg.val_images
    if cfg.dataset == "shapes":
        ann, images = split_paths("train" if train else "val")
    return CocoDetection(os.path.join(root, ann), os.path.join(root, images), transform=transform,
                         with_masks=cfg.with_masks, train=train, filter_empty_gt=cfg.filter_empty_gt,
                         min_size=cfg.min_size if train else 0, seed=seed)
