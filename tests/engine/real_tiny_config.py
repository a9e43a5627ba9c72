"""The default shapes Mask R-CNN shrunk for a quick end-to-end test: 4 training images of 64 px, two epochs."""

from dataclasses import replace

from detection.config import DataConfig, SolverConfig
from detection.configs.shapes_mask_rcnn_s14 import config as shapes

config = replace(
    shapes,
    name="shapes_mask_rcnn_s14_test",
    data=DataConfig(dataset="shapes", root="", with_masks=True, shapes_num_train=4, shapes_num_val=2,
                    shapes_image_size=64, train_scales=(56, 64), scale_mode="range", test_scale=64, max_size=128,
                    min_size=0, images_per_gpu=2, workers_per_gpu=0),
    solver=SolverConfig(lr=0.02, base_batch_size=2, warmup_iters=2, lr_steps=(1,), epochs=2, eval_interval=2,
                        log_interval=2, seed=1),
)
