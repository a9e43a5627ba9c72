import re

import pytest
import torch

from resnest_cuda import load_pretrained, resnest14, resnest50
from resnest_cuda.weights import convert_state_dict

MMDET_STEM = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4", "conv1.6": "stem.6"}
D2_STEM = {
    "conv1.0": "stem.conv1_1",
    "conv1.1": "stem.conv1_1.norm",
    "conv1.3": "stem.conv1_2",
    "conv1.4": "stem.conv1_2.norm",
    "conv1.6": "stem.conv1_3",
    "bn1": "stem.conv1_3.norm",
}
D2_BLOCK = {
    "conv1": "conv1",
    "bn1": "conv1.norm",
    "conv3": "conv3",
    "bn3": "conv3.norm",
    "downsample.1": "shortcut",
    "downsample.2": "shortcut.norm",
}
MMDET_HEADS = [
    "neck.lateral_convs.0.conv.weight",
    "neck.fpn_convs.3.conv.bias",
    "rpn_head.rpn_conv.weight",
    "rpn_head.rpn_cls.bias",
    "roi_head.bbox_head.shared_convs.0.bn.running_mean",
    "roi_head.bbox_head.fc_cls.weight",
    "roi_head.mask_head.convs.0.conv.weight",
    "roi_head.mask_head.upsample.weight",
]
D2_HEADS = ["backbone.fpn_lateral2.weight", "proposal_generator.rpn_head.conv.weight", "roi_heads.box_predictor.w"]


def to_mmdet(state):
    """Official names -> mmdetection checkpoint (SPEC §4), with detector heads and the `state_dict` wrapper."""
    out = {}
    for key, value in state.items():
        if key.startswith("bn1."):
            key = "stem.7." + key[len("bn1.") :]
        elif key[: len("conv1.0")] in MMDET_STEM:
            key = MMDET_STEM[key[: len("conv1.0")]] + key[len("conv1.0") :]
        out[f"backbone.{key}"] = value
    out.update({k: torch.zeros(1) for k in MMDET_HEADS})
    return {"meta": {"epoch": 12}, "state_dict": out}


def _d2_key(key):
    for ours, theirs in D2_STEM.items():
        if key.startswith(ours + "."):
            return theirs + key[len(ours) :]
    stage, index, rest = re.match(r"layer(\d)\.(\d+)\.(.+)", key).groups()
    for ours, theirs in D2_BLOCK.items():
        if rest.startswith(ours + "."):
            rest = theirs + rest[len(ours) :]
            break
    return f"res{int(stage) + 1}.{index}.{rest}"


def to_detectron2(state):
    """Official names -> detectron2-ResNeSt checkpoint (SPEC §4), with FPN/heads and the `model` wrapper."""
    out = {f"backbone.bottom_up.{_d2_key(k)}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    out.update({k: torch.zeros(1) for k in D2_HEADS})
    return {"model": out, "iteration": 90000}


def _random_state(model):
    torch.manual_seed(0)
    return {k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in model.state_dict().items()}


def _assert_loaded(model, state):
    loaded = model.state_dict()
    for key, value in state.items():
        if key in loaded and not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def test_spec_renames_of_a_few_keys():
    # Spot checks of the test's own converters against SPEC §4 names.
    assert _d2_key("conv1.0.weight") == "stem.conv1_1.weight"
    assert _d2_key("bn1.running_var") == "stem.conv1_3.norm.running_var"
    assert _d2_key("layer1.0.downsample.2.bias") == "res2.0.shortcut.norm.bias"
    assert _d2_key("layer4.2.conv2.fc1.bias") == "res5.2.conv2.fc1.bias"
    assert _d2_key("layer3.5.bn3.weight") == "res4.5.conv3.norm.weight"
    mm = to_mmdet({"conv1.6.weight": 1, "bn1.bias": 2, "layer1.0.conv1.weight": 3})["state_dict"]
    assert {"backbone.stem.6.weight", "backbone.stem.7.bias", "backbone.layer1.0.conv1.weight"} <= mm.keys()


def test_official_layout_loads_and_round_trips():
    source = _random_state(resnest14())
    model = resnest14()
    assert load_pretrained(model, source) == ([], [])
    _assert_loaded(model, source)


@pytest.mark.parametrize("layout", ["mmdet", "detectron2"])
@pytest.mark.parametrize("build", [resnest14, resnest50])
def test_detector_layouts_load_the_same_weights(layout, build):
    source = _random_state(build(num_classes=None))
    checkpoint = to_mmdet(source) if layout == "mmdet" else to_detectron2(source)
    converted, detected = convert_state_dict(checkpoint)
    assert detected == layout
    model = build(num_classes=None)
    assert load_pretrained(model, checkpoint) == ([], [])
    _assert_loaded(model, source)


def test_frozen_bn_model_loads_batchnorm_checkpoints():
    source = _random_state(resnest14(num_classes=None))
    for checkpoint in (source, to_mmdet(source), to_detectron2(source)):
        model = resnest14(num_classes=None, norm_layer="frozen_bn")
        assert load_pretrained(model, checkpoint) == ([], [])
        _assert_loaded(model, source)


def test_numpy_detectron2_checkpoint():
    # detectron2 model-zoo files are pickles of numpy arrays.
    source = _random_state(resnest14(num_classes=None))
    checkpoint = to_detectron2(source)
    checkpoint["model"] = {k: v.numpy() for k, v in checkpoint["model"].items()}
    model = resnest14(num_classes=None)
    assert load_pretrained(model, checkpoint) == ([], [])
    _assert_loaded(model, source)


def test_classifier_is_dropped_for_a_backbone():
    source = _random_state(resnest14(num_classes=1000))
    assert load_pretrained(resnest14(num_classes=None), source) == ([], [])


def test_load_from_path(tmp_path):
    source = _random_state(resnest14())
    path = tmp_path / "resnest14.pth"
    torch.save(to_mmdet(source), path)
    model = resnest14(num_classes=None)
    assert load_pretrained(model, str(path)) == ([], [])
    _assert_loaded(model, source)


class _Meta:  # stands for arbitrary training metadata pickled into a checkpoint
    pass


def test_untrusted_pickle_is_refused_with_advice(tmp_path):
    path = tmp_path / "with_meta.pth"
    torch.save({"state_dict": _random_state(resnest14()), "meta": _Meta()}, path)
    with pytest.raises(ValueError, match="weights_only=False"):
        load_pretrained(resnest14(), path)
    assert load_pretrained(resnest14(), torch.load(path, weights_only=False)) == ([], [])


def test_shape_mismatch_is_refused_with_key_and_shapes():
    source = _random_state(resnest14(num_classes=1000))
    with pytest.raises(ValueError, match=r"fc\.weight: checkpoint \(1000, 2048\) vs model \(10, 2048\)"):
        load_pretrained(resnest14(num_classes=10), source)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv2\.conv\.weight: checkpoint \(128, 32, 3, 3\)"):
        load_pretrained(resnest14(radix=4), source)


def test_missing_and_unexpected_keys():
    source = _random_state(resnest14())
    del source["layer2.0.conv3.weight"]
    source["layer9.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"1 missing keys \['layer2.0.conv3.weight'\].*1 unexpected keys"):
        load_pretrained(resnest14(), source)
    assert load_pretrained(resnest14(), source, strict=False) == (["layer2.0.conv3.weight"], ["layer9.extra"])


def test_unrecognized_layout():
    with pytest.raises(ValueError, match="unrecognized checkpoint layout"):
        load_pretrained(resnest14(), {"encoder.weight": torch.zeros(1)})
