"""Inference on an image for which the RPN keeps no proposal (seen on a small dataset of one's own early in
training): empty detections of the right shapes, not a reshape error."""

import pytest
import torch

import resnest_cuda
from detection.build import build_model
from detection.configs import get_config
from detection.engine.evaluate import to_coco_results
from detection.engine.overrides import apply_overrides

pytestmark = pytest.mark.skipif(not all(hasattr(resnest_cuda, n) for n in ("nms", "roi_align", "resnest14")),
                                reason="needs the detection ops and the ResNeSt backbones")


@pytest.mark.parametrize("name", ["tiny_test", "tiny_cascade_test"])
def test_no_proposals_give_empty_detections(name):
    cfg = get_config(name)
    apply_overrides(cfg, ["model.rpn.test_proposals.min_box_size=10000"])  # every proposal is dropped
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    with torch.no_grad():
        outputs = model([torch.rand(3, 64, 80) * 255, torch.rand(3, 48, 64) * 255])
    for output, (h, w) in zip(outputs, [(64, 80), (48, 64)]):
        assert output["boxes"].shape == (0, 4) and output["scores"].shape == (0,) and output["labels"].shape == (0,)
        assert output["masks"].shape == (0, h, w)
        assert to_coco_results(output, 1, [3, 7, 11]) == []
