"""A tiny config for engine tests: the stand-in detector on a 16-image shapes dataset at 64 px."""

from standin import StandInConfig

from detection.config import Config, DataConfig, SolverConfig

config = Config(
    name="standin_tiny",
    model=StandInConfig(num_classes=4, width=8, with_masks=True),
    data=DataConfig(dataset="shapes", root="", with_masks=True, shapes_num_train=16, shapes_num_val=8,
                    shapes_image_size=64, train_scales=(48, 64), scale_mode="range", test_scale=64, max_size=100,
                    min_size=0, images_per_gpu=2, workers_per_gpu=0),
    solver=SolverConfig(lr=0.02, base_batch_size=2, warmup_iters=3, lr_steps=(1,), epochs=2, log_interval=4,
                        grad_clip=10.0, seed=3),
)
