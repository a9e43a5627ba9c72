"""The training step's results do not depend on how its tensors are shaped.

The step can keep fixed-size tensors throughout (padded proposals, `num` sampled slots per image, `pos_limit` mask
slots per image; padding carries zero weight) or drop the padding as it goes (compacted tensors, one host sync per
drop). In fp64 on the CPU, with the same random draws, both give the losses and gradients recorded from the
compacted step (`tests/data/static_shapes_golden.json`, written by `python -m tests.detection.test_static_shapes`).

The record belongs to the torch build CI pins (2.13.0, CPU): the first record, made before the fixed-size step
existed, was not reproduced by that build even from the code that made it (loss_rpn_bbox off by 7e-10 relative,
and a sampled RoI that differs from it, loss_cls off by 1.5e-5), so it was written again from that build; both
paths agreed with each other to 1e-9 before and after.

"The same random draws": the RPN sampler's keys come from the global generator over the anchors, whose layout
never changes; the R-CNN sampler's keys are substituted by a hash of each candidate box's coordinates, so that a
box keeps its key whether the proposals around it are padded or compacted.
"""

import json
import pathlib

import pytest
import torch

from benchmarks.bench_detector import synthetic_batch
from benchmarks.count_syncs import MODELS
from detection.build import build_model
from detection.configs import get_config
from detection.modeling import roi_heads

GOLDEN = pathlib.Path(__file__).parents[1] / "data" / "static_shapes_golden.json"
SIZE = (96, 128)
# Mask R-CNN's losses include Faster R-CNN's, Cascade Mask R-CNN's those of Cascade R-CNN: two models cover four.
TESTED = ("mask", "cascade_mask")


def box_hash_keys(boxes: torch.Tensor) -> torch.Tensor:
    """float [2, N] in [0, 1): two pseudo-random keys per box, a function of its coordinates alone."""
    b = boxes.detach().double()
    base = b @ torch.tensor([12.9898, 78.233, 37.719, 4.581], dtype=torch.float64, device=b.device)
    keys = [torch.frac(torch.sin(base + salt).abs() * 43758.5453) for salt in (0.0, 1.7)]
    return torch.stack(keys).to(boxes.dtype)


def _set_static(model, static: bool | None) -> None:
    model.static_shapes = static


def build_slim(model_key: str):
    """The seed config of `model_key` on ResNeSt-14 with narrow necks and heads (the logic under test does not
    depend on widths; fp64 at full width would take minutes)."""
    cfg = get_config(MODELS[model_key]).model
    cfg.backbone.name, cfg.backbone.norm = "resnest14", "bn"
    width = 32
    cfg.fpn.out_channels = cfg.rpn.in_channels = cfg.rpn.feat_channels = width
    for stage in cfg.roi_head.stages:
        stage.box_head.in_channels = stage.box_head.conv_channels = width
        stage.box_head.fc_channels = 64
    if cfg.roi_head.mask_head is not None:
        cfg.roi_head.mask_head.in_channels = cfg.roi_head.mask_head.conv_channels = width
    model = build_model(cfg).train()
    return model, cfg.roi_head.stages[0].box_head.num_classes, cfg.roi_head.mask_head is not None


def run_step(model_key: str, static: bool | None = None) -> dict:
    """Losses and a per-parameter summary of the gradients of one fp64 training step of `model_key`."""
    torch.manual_seed(0)
    model, num_classes, with_masks = build_slim(model_key)
    model = model.double()
    _set_static(model, static)
    images, targets = synthetic_batch(2, SIZE, num_classes, with_masks, "cpu")
    images = [im.double() for im in images]
    targets = [{k: (v.double() if k == "boxes" else v) for k, v in t.items()} for t in targets]
    torch.manual_seed(1)
    losses = model(images, targets)
    sum(losses.values()).backward()
    g = torch.Generator().manual_seed(2)
    grads = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            probe = torch.randn(p.shape, generator=g, dtype=torch.float64)
            grads[name] = [float(p.grad.sum()), float((p.grad * probe).sum()), float(p.grad.abs().sum())]
    return {"losses": {k: float(v.detach()) for k, v in losses.items()}, "grads": grads}


@pytest.fixture()
def hashed_keys(monkeypatch):
    monkeypatch.setattr(roi_heads, "sampling_keys", box_hash_keys)


def _assert_close(got: dict, want: dict) -> None:
    assert got["losses"].keys() == want["losses"].keys()
    for name, value in want["losses"].items():
        assert got["losses"][name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert got["grads"].keys() == want["grads"].keys()
    for name, values in want["grads"].items():
        scale = max(abs(v) for v in values) + 1e-30
        for g, w in zip(got["grads"][name], values):
            assert abs(g - w) <= 1e-9 * scale + 1e-14, (name, got["grads"][name], values)


@pytest.mark.parametrize("model_key", TESTED)
@pytest.mark.parametrize("static", [False, True], ids=["compacted", "fixed_size"])
def test_step_matches_the_recorded_step(hashed_keys, model_key, static):
    want = json.loads(GOLDEN.read_text())[model_key]
    got = run_step(model_key, static)
    assert got["losses"], "no losses"
    assert all(v != 0.0 for v in got["losses"].values()), got["losses"]  # every loss term is exercised
    _assert_close(got, want)


def write_golden() -> None:
    roi_heads.sampling_keys = box_hash_keys
    GOLDEN.write_text(json.dumps({key: run_step(key) for key in TESTED}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    write_golden()
