"""A small Mask R-CNN for a dataset of one's own on a CPU: the default config's ResNeSt-14-FPN detector
(shapes_mask_rcnn_s14: trained from scratch, narrow FPN and heads, two anchor scales for small objects) reading a
COCO-format folder, with a schedule for a few dozen training images.

The data fields point at the layout `python -m detection.data.example_coco OUT_DIR` writes
(annotations/{train,val}.json, train/, val/); `--data-root OUT_DIR` names the folder. Set `model.num_classes=K`
for K categories (3 here, as the example). Images are resized to a short side of 96-160 px in training and 128 px
in evaluation (the example's images are 128 px; set data.train_scales, data.test_scale and data.max_size for
larger ones).

The schedule: 30 epochs, the lr divided by 10 after epochs 24 and 28; the default config's lr, 0.04 per 16 images
(0.01 at 4 images per batch). The warmup is 50 iterations but at most 3 epochs (solver.warmup_max_epochs), so that
on a few images it does not last most of the run. Measured on the example (80 train images: 20 iterations per
epoch, 600 in all): bbox AP 0.304 / segm AP 0.288 on its 20 validation images, in 7 min 25 s on a 2-core CPU
shared with other work (one intra-op thread). With 0.01 at 10 iterations per epoch (40 images of 160 px) the
same detector reached only bbox AP 0.045 in 300 iterations: a from-scratch detector needs several hundred
iterations. Data on which the loss grows instead (the log says so) needs a lower lr, e.g. solver.lr=0.01.
"""

import copy
from dataclasses import replace

from detection.config import DataConfig, SolverConfig
from detection.configs.shapes_mask_rcnn_s14 import config as shapes
from detection.modeling.config import set_num_classes

model = copy.deepcopy(shapes.model)
set_num_classes(model, 3)

config = replace(
    shapes,
    name="small_mask_rcnn_s14",
    model=model,
    data=DataConfig(dataset="coco", root="data/my_coco", train_ann="annotations/train.json", train_images="train",
                    val_ann="annotations/val.json", val_images="val", with_masks=True, train_scales=(96, 160),
                    scale_mode="range", max_size=256, test_scale=128, min_size=0, images_per_gpu=4,
                    workers_per_gpu=1, resize_mode="antialias"),
    solver=SolverConfig(lr=0.04, base_batch_size=16, warmup_iters=50, warmup_max_epochs=3, lr_steps=(24, 28),
                        epochs=30, eval_interval=30, log_interval=10, keep_checkpoints=2),
)
