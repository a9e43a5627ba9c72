"""Default config: Mask R-CNN on the synthetic shapes dataset, sized to train and evaluate on a 2-core CPU in
under 15 minutes. The model section is filled in once the R-CNN model configs exist; until then `model` is None
and `python -m detection.train` stops when building the model."""

from detection.config import Config, DataConfig, SolverConfig

config = Config(
    name="shapes_mask_rcnn_s14",
    model=None,
    data=DataConfig(dataset="shapes", root="", with_masks=True, shapes_num_train=600, shapes_num_val=100,
                    shapes_image_size=128, train_scales=(112, 144), scale_mode="range", max_size=256,
                    test_scale=128, min_size=0, images_per_gpu=4, workers_per_gpu=1),
    solver=SolverConfig(lr=0.02, base_batch_size=16, warmup_iters=50, lr_steps=(4,), epochs=5, log_interval=20),
)
