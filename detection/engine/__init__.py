"""Training and evaluation engine: loop, checkpoints, COCO evaluation, distributed helpers."""
