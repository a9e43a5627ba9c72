"""Plain-Python configuration: typed dataclasses. A config file in detection/configs/ builds one `Config`;
`detection.build.build_model(cfg.model)` is the one place that turns a model config into modules.

The defaults below are the values shared by the mmdetection ResNeSt seed configs (SPEC §5); a config file changes
only what differs.
"""

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    """Dataset and transforms. Image sizes follow mmdetection's (long_max, short) convention for resizing."""

    dataset: str = "coco"  # "coco" (COCO-format folder) or "shapes" (generated synthetic dataset)
    root: str = "data/coco"
    train_ann: str = "annotations/instances_train2017.json"
    train_images: str = "train2017"
    val_ann: str = "annotations/instances_val2017.json"
    val_images: str = "val2017"
    with_masks: bool = False
    # False (the Mask R-CNN seed configs, as mmdetection's): polygon annotations stay polygons and mask targets are
    # rasterised per RoI (detection/data/polygons.py); images with RLE masks keep full-image bitmaps.
    poly2mask: bool = True
    # Training resize: "range" draws the short side uniformly from [min(train_scales), max(train_scales)];
    # "value" picks one of train_scales. The long side is capped at max_size.
    train_scales: tuple[int, ...] = (640, 800)
    scale_mode: str = "range"
    max_size: int = 1333
    test_scale: int = 800
    # "mmcv": mmdetection's resize (cv2 bilinear on uint8, no antialiasing, sizes int(x * s + 0.5)), in training
    # and evaluation; "antialias": float bilinear, antialiased when shrinking (detection/data/transforms.py).
    resize_mode: str = "mmcv"
    flip_prob: float = 0.5
    size_divisor: int = 32
    filter_empty_gt: bool = True
    min_size: int = 32  # images smaller than this on either side are skipped in training
    images_per_gpu: int = 2  # training batch per process
    # Evaluation batch per process. 1, as mmdetection and detectron2 evaluate: a batch pads its images to a common
    # size, and the padding changes a detector's outputs (and so its AP) a little.
    test_images_per_gpu: int = 1
    workers_per_gpu: int = 2
    # Only for dataset="shapes": the generated dataset's size.
    shapes_num_train: int = 0
    shapes_num_val: int = 0
    shapes_image_size: int = 0
    shapes_seed: int = 0


@dataclass
class SolverConfig:
    """SGD with linear warmup and step decay by epoch. `lr` is for `base_batch_size` images per iteration; the
    trainer scales it linearly to the actual total batch."""

    lr: float = 0.02
    base_batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    # > 0: the warmup lasts at most this many epochs (an epoch of a small dataset of one's own is a few
    # iterations); 0: solver.warmup_iters whatever the epoch length. See detection/engine/schedule.py.
    warmup_max_epochs: float = 0.0
    lr_steps: tuple[int, ...] = (8, 11)  # epochs after which lr is multiplied by gamma
    gamma: float = 0.1
    epochs: int = 12
    grad_clip: float | None = None  # max gradient norm, None for no clipping
    amp: bool = True  # train with bf16 autocast on CUDA (ignored on CPU); the eight seed configs train in fp32
    eval_amp: bool = False  # evaluate (detection.test and during training) with bf16 autocast on CUDA
    checkpoint_interval: int = 1  # epochs
    keep_checkpoints: int = 0  # keep only the newest N epoch_<n>.pth files (latest.pth always); 0 keeps all
    checkpoint_iters: int = 0  # also refresh latest.pth every N iterations inside an epoch (0: epoch ends only)
    eval_interval: int = 1  # epochs
    log_interval: int = 20  # iterations
    seed: int = 0


@dataclass
class Config:
    name: str
    model: object  # the model config dataclass of detection/modeling (see detection/build.py)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
