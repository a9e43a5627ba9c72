"""Detection data: COCO-format datasets, the synthetic shapes dataset, transforms and loaders."""
