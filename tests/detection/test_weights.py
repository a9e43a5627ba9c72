"""detection.load_checkpoint: mmdetection checkpoints of the eight seed models (keys and shapes written here from
SPEC §2/§4/§5, not from our modules), our own checkpoints, and the refusals."""

import os

import pytest
import torch

import resnest_cuda
from detection import load_checkpoint
from detection.build import build_model
from detection.configs import get_config

from .stand_ins import random_batch, tiny_model

SEED_MODELS = {
    # config module: (blocks per stage, stem width, kind)
    "faster_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco": ((3, 4, 6, 3), 32, "faster"),
    "faster_rcnn_s101_fpn_syncbn_backbone_head_mstrain_range_1x_coco": ((3, 4, 23, 3), 64, "faster"),
    "mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco": ((3, 4, 6, 3), 32, "mask"),
    "mask_rcnn_s101_fpn_syncbn_backbone_head_mstrain_1x_coco": ((3, 4, 23, 3), 64, "mask"),
    "cascade_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco": ((3, 4, 6, 3), 32, "cascade"),
    "cascade_rcnn_s101_fpn_syncbn_backbone_head_mstrain_range_1x_coco": ((3, 4, 23, 3), 64, "cascade"),
    "cascade_mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco": ((3, 4, 6, 3), 32, "cascade_mask"),
    "cascade_mask_rcnn_s101_fpn_syncbn_backbone_head_mstrain_1x_coco": ((3, 4, 23, 3), 64, "cascade_mask"),
}


def bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def mmdet_backbone(blocks, w):
    """ResNeSt (radix 2, cardinality 1, width 64, deep stem, avg-down, avd) in mmdetection's key layout."""
    keys = {"backbone.stem.0.weight": (w, 3, 3, 3), "backbone.stem.3.weight": (w, w, 3, 3),
            "backbone.stem.6.weight": (2 * w, w, 3, 3)}
    keys.update(bn("backbone.stem.1", w) | bn("backbone.stem.4", w) | bn("backbone.stem.7", 2 * w))
    inplanes = 2 * w
    for stage, n in enumerate(blocks):
        planes = 64 * 2**stage
        inter = max(planes * 2 // 4, 32)
        for i in range(n):
            p = f"backbone.layer{stage + 1}.{i}"
            keys[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            keys.update(bn(f"{p}.bn1", planes))
            keys[f"{p}.conv2.conv.weight"] = (2 * planes, planes // 2, 3, 3)  # groups = radix
            keys.update(bn(f"{p}.conv2.bn0", 2 * planes))
            keys[f"{p}.conv2.fc1.weight"] = (inter, planes, 1, 1)
            keys[f"{p}.conv2.fc1.bias"] = (inter,)
            keys.update(bn(f"{p}.conv2.bn1", inter))
            keys[f"{p}.conv2.fc2.weight"] = (2 * planes, inter, 1, 1)
            keys[f"{p}.conv2.fc2.bias"] = (2 * planes,)
            keys[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            keys.update(bn(f"{p}.bn3", 4 * planes))
            if i == 0:
                keys[f"{p}.downsample.1.weight"] = (4 * planes, inplanes, 1, 1)
                keys.update(bn(f"{p}.downsample.2", 4 * planes))
            inplanes = 4 * planes
    return keys


def mmdet_heads(kind):
    keys = {}
    for i, c in enumerate((256, 512, 1024, 2048)):
        keys |= {f"neck.lateral_convs.{i}.conv.weight": (256, c, 1, 1), f"neck.lateral_convs.{i}.conv.bias": (256,),
                 f"neck.fpn_convs.{i}.conv.weight": (256, 256, 3, 3), f"neck.fpn_convs.{i}.conv.bias": (256,)}
    keys |= {"rpn_head.rpn_conv.weight": (256, 256, 3, 3), "rpn_head.rpn_conv.bias": (256,),
             "rpn_head.rpn_cls.weight": (3, 256, 1, 1), "rpn_head.rpn_cls.bias": (3,),
             "rpn_head.rpn_reg.weight": (12, 256, 1, 1), "rpn_head.rpn_reg.bias": (12,)}
    cascade = kind.startswith("cascade")
    stages = [f"roi_head.bbox_head.{s}" for s in range(3)] if cascade else ["roi_head.bbox_head"]
    for p in stages:
        for i in range(4):
            keys[f"{p}.shared_convs.{i}.conv.weight"] = (256, 256, 3, 3)
            keys.update(bn(f"{p}.shared_convs.{i}.bn", 256))
        reg = 4 if cascade else 320
        keys |= {f"{p}.shared_fcs.0.weight": (1024, 256 * 7 * 7), f"{p}.shared_fcs.0.bias": (1024,),
                 f"{p}.fc_cls.weight": (81, 1024), f"{p}.fc_cls.bias": (81,),
                 f"{p}.fc_reg.weight": (reg, 1024), f"{p}.fc_reg.bias": (reg,)}
    if kind.endswith("mask"):
        for p in [f"roi_head.mask_head.{s}" for s in range(3)] if cascade else ["roi_head.mask_head"]:
            for i in range(4):
                keys[f"{p}.convs.{i}.conv.weight"] = (256, 256, 3, 3)
                keys.update(bn(f"{p}.convs.{i}.bn", 256))
            keys |= {f"{p}.upsample.weight": (256, 256, 2, 2), f"{p}.upsample.bias": (256,),
                     f"{p}.conv_logits.weight": (80, 256, 1, 1), f"{p}.conv_logits.bias": (80,)}
    return keys


def random_state_dict(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        counter = key.endswith("num_batches_tracked")
        out[key] = torch.randint(0, 100, shape, generator=g) if counter else torch.randn(*shape, generator=g)
    return out


needs_backbones = pytest.mark.skipif(not hasattr(resnest_cuda, "resnest50"), reason="needs the ResNeSt backbones")


@needs_backbones
@pytest.mark.parametrize("module", sorted(SEED_MODELS))
def test_mmdet_checkpoint_of_every_seed_model_loads(module):
    blocks, stem_width, kind = SEED_MODELS[module]
    shapes = mmdet_backbone(blocks, stem_width) | mmdet_heads(kind)
    model = build_model(get_config(module).model)
    state = random_state_dict(shapes)
    result = load_checkpoint(model, {"meta": {"epoch": 12}, "state_dict": state})
    assert result.layout == "mmdetection" and result.missing == [] and result.unexpected == []
    own = model.state_dict()
    assert len(own) == len(shapes)
    torch.testing.assert_close(own["backbone.conv1.0.weight"], state["backbone.stem.0.weight"])
    torch.testing.assert_close(own["backbone.bn1.running_var"], state["backbone.stem.7.running_var"])
    last = "roi_head.bbox_head.2.fc_cls.weight" if kind.startswith("cascade") else "roi_head.bbox_head.fc_cls.weight"
    torch.testing.assert_close(own[last], state[last])


def test_own_checkpoint_round_trip(tmp_path):
    model, _ = tiny_model("cascade_mask_rcnn", seed=1)
    model.eval()
    images, _ = random_batch((1, 1))
    path = os.path.join(tmp_path, "model.pth")
    torch.save({"model": model.state_dict(), "epoch": 3}, path)
    other, _ = tiny_model("cascade_mask_rcnn", seed=2)
    other.eval()
    result = load_checkpoint(other, path)
    assert result.layout == "resnest_cuda" and not result.missing and not result.unexpected
    model.roi_head.score_thr = other.roi_head.score_thr = 0.0
    with torch.no_grad():
        for a, b in zip(model(images), other(images)):
            for key in a:
                torch.testing.assert_close(a[key], b[key])


def test_shape_mismatch_is_refused():
    model, _ = tiny_model("faster_rcnn")
    state = model.state_dict()
    state["roi_head.bbox_head.fc_cls.weight"] = torch.zeros(5, 7)
    with pytest.raises(ValueError, match=r"roi_head.bbox_head.fc_cls.weight: checkpoint \(5, 7\)"):
        load_checkpoint(model, state)


def test_missing_and_unexpected_keys():
    model, _ = tiny_model("faster_rcnn")
    state = dict(model.state_dict())
    state.pop("rpn_head.rpn_cls.bias")
    state["roi_head.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="1 missing keys"):
        load_checkpoint(model, state)
    result = load_checkpoint(model, state, strict=False)
    assert result.missing == ["rpn_head.rpn_cls.bias"] and result.unexpected == ["roi_head.extra.weight"]


def test_ddp_prefix_and_bad_input():
    model, _ = tiny_model("faster_rcnn")
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    assert load_checkpoint(model, state).missing == []
    with pytest.raises(TypeError, match="checkpoint"):
        load_checkpoint(model, [1, 2])
    with pytest.raises(ValueError, match="no state dict"):
        load_checkpoint(model, {"epoch": 1})
