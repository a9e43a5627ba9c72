"""`python -m detection.demo`: bad inputs and outputs are refused before any model is built; grayscale and RGBA
images are converted and drawn."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from detection import demo

from .stand_ins import tiny_model


def _never_built(cfg):
    pytest.fail("the model must not be built for a bad input")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, _ = tiny_model("mask_rcnn")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({"model": model.state_dict(), "meta": {"class_names": ["a", "b", "c"]}}, path)
    return str(path)


def _args(checkpoint, image, out, *extra):
    return ["--config", "tiny_test", "--checkpoint", checkpoint, "--image", str(image), "--out", str(out), *extra]


def test_bad_inputs_and_outputs_are_refused_before_inference(tmp_path, checkpoint, capsys):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(good)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    cases = [
        (_args(checkpoint, text, tmp_path / "o.png"), "notes.txt.*not an image"),
        (_args(checkpoint, cut, tmp_path / "o.png"), "cut.png.*cannot be decoded"),
        (_args(checkpoint, tmp_path / "none.png", tmp_path / "o.png"), "none.png.*no such file"),
        (_args(checkpoint, good, tmp_path / "missing" / "o.png"), "folder .*missing does not exist"),
        (_args(checkpoint, good, tmp_path / "o.xyz"), "unknown image extension '.xyz'"),
    ]
    for argv, message in cases:
        assert demo.main(argv, model_builder=_never_built) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and re.search(message, err), err
    assert demo.main(_args(str(tmp_path / "no.pth"), good, tmp_path / "o.png")) == 2
    assert "no.pth" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grayscale_and_rgba_images_are_converted(tmp_path, checkpoint, capsys, mode):
    rng = np.random.default_rng(0)
    channels = {"L": (), "RGBA": (4,)}[mode]
    image = tmp_path / f"in_{mode}.png"
    Image.fromarray(rng.integers(0, 256, (90, 120, *channels), dtype=np.uint8), mode=mode).save(image)
    out = tmp_path / "out.png"
    assert demo.main(_args(checkpoint, image, out, "--score-thr", "0", "--min-canvas", "0")) == 0
    assert "drawn to" in capsys.readouterr().out
    with Image.open(out) as drawn:
        assert drawn.size == (120, 90) and drawn.mode == "RGB"


def test_a_checkpoint_of_another_class_count_suggests_the_override(tmp_path, checkpoint, capsys):
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(image)
    assert demo.main(_args(checkpoint, image, tmp_path / "o.png", "model.num_classes=5")) == 2
    err = capsys.readouterr().err
    assert "does not fit config 'tiny_test'" in err
    assert err.rstrip().endswith("the checkpoint has 3 classes and the config 5: add model.num_classes=3 to the "
                                 "command"), err


def test_small_images_are_drawn_enlarged(tmp_path, checkpoint):
    from detection import Detector

    detector = Detector.from_config("tiny_test", checkpoint)
    image = np.zeros((96, 64, 3), np.uint8)
    result = detector(image)
    assert detector.draw(image, result).size == (341, 512)  # long side 512 by default, aspect kept
    assert detector.draw(image, result, min_canvas=0).size == (64, 96)
