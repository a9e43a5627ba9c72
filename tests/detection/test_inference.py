"""detection.Detector: every accepted input gives the model's own detections mapped to the original image, through
the evaluation test resize; thresholds, names, drawing, checkpoints (ours, mmdetection's, another model's) and bad
input."""

import numpy as np
import pytest
import torch
from PIL import Image

import detection.inference as inference
from detection import Detector
from detection.data.build import build_test_transform
from resnest_cuda.weights import mmdet_stem_key

from .stand_ins import tiny_model


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return Detector.from_config("tiny_test", None)


def _image(h=100, w=150, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _expected(detector, image: torch.Tensor) -> dict:
    """The model called directly: the config's test resize, then detections mapped to the original size."""
    resized, _ = build_test_transform(detector.cfg.data)(image, None)
    assert resized.shape[1:] != image.shape[1:]  # the resize is exercised
    with torch.no_grad():
        return detector.model([resized], original_sizes=[tuple(image.shape[1:])])[0]


def _assert_same(result, expected: dict) -> None:
    assert len(result) == expected["boxes"].shape[0] > 0
    torch.testing.assert_close(result.boxes, expected["boxes"], atol=1e-4, rtol=0)
    torch.testing.assert_close(result.scores, expected["scores"], atol=1e-6, rtol=0)
    assert torch.equal(result.labels, expected["labels"])
    assert torch.equal(result.masks, expected["masks"])


def test_every_input_kind_gives_the_models_detections_in_original_pixels(detector, tmp_path):
    array = _image()
    tensor = torch.from_numpy(array).permute(2, 0, 1).float()
    expected = _expected(detector, tensor)
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    inputs = [str(path), path, Image.fromarray(array), array, tensor, tensor.byte(), np.concatenate(
        [array, np.full((100, 150, 1), 7, np.uint8)], axis=2)]  # RGBA: alpha dropped
    for item in inputs:
        result = detector(item)
        assert result.image_size == (100, 150) and result.masks.shape[1:] == (100, 150)
        _assert_same(result, expected)
    assert (result.boxes[:, 0::2] <= 150).all() and (result.boxes[:, 1::2] <= 100).all()
    assert result.boxes[:, 2].max() > 128 * 150 / 160 - 1  # not clipped to the resized image (120 x 160)


def test_a_list_is_batched_and_keeps_its_order(detector):
    images = [_image(100, 150, 1), _image(90, 120, 2), _image(120, 100, 3)]
    results = detector(images)
    assert [r.image_size for r in results] == [(100, 150), (90, 120), (120, 100)]
    for image, result in zip(images, results):
        single = detector(image)
        torch.testing.assert_close(result.boxes, single.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(result.scores, single.scores, atol=1e-5, rtol=0)


def test_grayscale_inputs_are_converted(detector, tmp_path):
    gray = _image()[:, :, 0]
    expected = detector(np.repeat(gray[:, :, None], 3, axis=2))
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    for item in (gray, gray[:, :, None], torch.from_numpy(gray), tmp_path / "gray.png", Image.fromarray(gray)):
        result = detector(item)
        torch.testing.assert_close(result.boxes, expected.boxes)
        assert torch.equal(result.labels, expected.labels)


def test_score_threshold_and_class_names(detector):
    image = _image()
    everything = detector(image)
    cut = float(everything.scores.median())
    kept = detector(image, score_threshold=cut)
    assert 0 < len(kept) < len(everything) and bool((kept.scores >= cut).all())
    assert int((everything.scores >= cut).sum()) == len(kept)
    assert detector.class_names == ["class 0", "class 1", "class 2"]  # tiny_test is a shapes config without names
    assert kept.names == [f"class {i}" for i in kept.labels.tolist()]


def test_test_resize_is_the_evaluation_one(monkeypatch):
    calls = []
    real = inference.build_test_transform

    def spy(cfg):
        calls.append(cfg)
        return real(cfg)

    monkeypatch.setattr(inference, "build_test_transform", spy)
    Detector.from_config("tiny_test", None)
    assert len(calls) == 1 and calls[0].test_scale == 128


def test_draw_returns_the_image_with_detections(detector):
    image = _image()
    result = detector(image)
    assert len(result) > 0
    drawn = detector.draw(image, result, min_canvas=0)
    assert drawn.size == (150, 100) and drawn.mode == "RGB"
    assert (np.asarray(drawn) != image).any()
    nothing_kept = detector(image, score_threshold=2.0)
    assert (np.asarray(detector.draw(image, nothing_kept, min_canvas=0)) == image).all()
    assert detector.draw(image, result, min_canvas=300).size == (300, 200)
    assert detector.draw(image, result).size == (512, 341)  # small images are drawn enlarged by default
    with pytest.raises(ValueError, match="size"):
        detector.draw(_image(50, 50), result)


def test_checkpoints_ours_mmdetection_and_a_wrong_one(tmp_path, detector):
    model, _ = tiny_model("mask_rcnn", seed=3)
    ours = tmp_path / "ours.pth"
    torch.save({"model": model.state_dict(), "meta": {"class_names": ["a", "b", "c"]}}, ours)
    mmdet = tmp_path / "mmdet.pth"
    # ours -> mmdetection's stem names, inverted from the one map (stem.0.w -> conv1.0.w, ..., stem.7.w -> bn1.w)
    to_mmdet = {f"backbone.{mmdet_stem_key(f'stem.{i}.w')[:-1]}": f"backbone.stem.{i}." for i in "013467"}
    state = {}
    for key, value in model.state_dict().items():
        prefix = next((p for p in to_mmdet if key.startswith(p)), None)
        state[to_mmdet[prefix] + key[len(prefix):] if prefix else key] = value
    assert any(k.startswith("backbone.stem.") for k in state)
    torch.save({"state_dict": state, "meta": {"CLASSES": ("p", "q", "r")}}, mmdet)
    image = _image()
    a = Detector.from_config("tiny_test", str(ours))(image)
    b = Detector.from_config("tiny_test", str(mmdet))(image)
    assert a.names[0] in "abc" and b.names[0] in "pqr"
    torch.testing.assert_close(a.boxes, b.boxes)
    assert not torch.equal(a.scores[:5], detector(image).scores[:5])  # the weights were loaded

    cascade, _ = tiny_model("cascade_mask_rcnn")
    other = tmp_path / "cascade.pth"
    torch.save({"model": cascade.state_dict()}, other)
    with pytest.raises(ValueError, match=r"does not fit config 'tiny_test'.*roi_head\.bbox_head\.0"):
        Detector.from_config("tiny_test", str(other))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        Detector.from_config("tiny_test", str(tmp_path / "missing.pth"))


def test_bad_inputs_raise_errors_naming_them(detector, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.txt.*not an image"):
        detector(str(text))
    Image.fromarray(_image()).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.jpg.*cannot be decoded"):
        detector(str(tmp_path / "cut.jpg"))
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        detector(str(tmp_path / "nowhere.jpg"))
    with pytest.raises(ValueError, match=r"images\[1\]: expected a numpy array"):
        detector([_image(), np.zeros((4, 5, 2), np.uint8)])
    with pytest.raises(ValueError, match="image: expected a tensor"):
        detector(torch.zeros(2, 3, 8, 8))
    with pytest.raises(TypeError, match="uint8 or floating"):
        detector(np.zeros((8, 8, 3), np.int32))
    with pytest.raises(TypeError, match="got int"):
        detector(3)
    with pytest.raises(ValueError, match="empty"):
        detector(np.zeros((0, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="non-empty list"):
        detector([])
    with pytest.raises(ValueError, match="precision"):
        Detector(detector.model, detector.cfg, detector.class_names, precision="int8")
