"""Faster R-CNN variant of the default shapes config: the same detector without the mask head, boxes only."""

from dataclasses import replace

from detection.configs.shapes_mask_rcnn_s14 import config as mask_config

config = replace(
    mask_config,
    name="shapes_faster_rcnn_s14",
    model=replace(mask_config.model, kind="faster_rcnn",
                  roi_head=replace(mask_config.model.roi_head, mask_head=None)),
    data=replace(mask_config.data, with_masks=False),
)
