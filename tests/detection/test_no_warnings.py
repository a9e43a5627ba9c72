"""Runs print no warnings that are not the user's business: image decoding (NumPy's non-writable array) and
ONNX export without torchvision (torch.onnx's "torchvision is not installed", once per torchvision op)."""

import logging
import warnings

import numpy as np
from PIL import Image

from detection.data.coco import load_rgb
from detection.export import _without_torchvision_notices


def test_images_decode_without_warnings(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = load_rgb(str(tmp_path / "x.png"))
    assert image.shape == (3, 20, 30) and image.is_contiguous()
    assert (image.permute(1, 2, 0).numpy() == pixels).all()
    image[0, 0, 0] = 1  # writable


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_export_drops_only_the_torchvision_notices():
    log = logging.getLogger("torch.onnx._internal.exporter._registration")  # torch's loggers do not propagate
    collect = _Collect()
    log.addHandler(collect)
    try:
        with _without_torchvision_notices():
            log.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
            log.warning("something else")
        log.warning("torchvision is not installed. Skipping %s", "after")
    finally:
        log.removeHandler(collect)
    assert collect.messages == ["something else", "torchvision is not installed. Skipping after"]
