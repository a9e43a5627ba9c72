"""The training step's results do not depend on how its tensors are shaped.

The step can keep fixed-size tensors throughout (padded proposals, `num` sampled slots per image, `pos_limit` mask
slots per image; padding carries zero weight) or drop the padding as it goes (compacted tensors, one host sync per
drop). In fp64 on the CPU, with the same random draws, both give the same losses and gradients (to 1e-9), and so
does the step with the fused BatchNorm + ReLU ops replaced by the norm modules they fuse.

A recorded step (`tests/data/static_shapes_golden.json`, written by `python -m tests.detection.test_static_shapes`)
guards against larger changes only: records are not reproducible to 1e-9 across machines even with the pinned torch
build (2.13.0, CPU). Two records, each made on a machine where it reproduced, differ from another machine's step by
7e-10 in loss_rpn_bbox and by a sampled RoI, which moves loss_cls by 1.5e-5; the same code and build agree with
themselves to 1e-15. So the record is compared to 1e-3, the paths with each other to 1e-9.

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


def _assert_close(got: dict, want: dict, rel: float = 1e-9, grads: bool = True) -> None:
    assert got["losses"].keys() == want["losses"].keys()
    for name, value in want["losses"].items():
        assert got["losses"][name] == pytest.approx(value, rel=rel, abs=1e-12), name
    if not grads:
        return
    assert got["grads"].keys() == want["grads"].keys()
    for name, values in want["grads"].items():
        scale = max(abs(v) for v in values) + 1e-30
        for g, w in zip(got["grads"][name], values):
            assert abs(g - w) <= rel * scale + 1e-14, (name, got["grads"][name], values)


_STEPS: dict = {}


def cached_step(model_key: str, static: bool, fused_norms: bool = True) -> dict:
    """run_step once per (model, path, norms) for the whole module (each is an fp64 step of several seconds)."""
    key = (model_key, static, fused_norms)
    if key not in _STEPS:
        original = roi_heads.sampling_keys
        roi_heads.sampling_keys = box_hash_keys
        try:
            if fused_norms:
                _STEPS[key] = run_step(model_key, static)
            else:
                import resnest_cuda.batch_norm as fused

                applies = fused.fused_applies
                fused.fused_applies = lambda *args: False  # every norm -> ReLU runs as the modules it fuses
                try:
                    _STEPS[key] = run_step(model_key, static)
                finally:
                    fused.fused_applies = applies
        finally:
            roi_heads.sampling_keys = original
    return _STEPS[key]


@pytest.mark.parametrize("model_key", TESTED)
def test_fixed_size_step_equals_compacted_step(model_key):
    compacted, fixed = cached_step(model_key, False), cached_step(model_key, True)
    assert compacted["losses"], "no losses"
    assert all(v != 0.0 for v in compacted["losses"].values()), compacted["losses"]  # every loss term is exercised
    _assert_close(fixed, compacted)


@pytest.mark.parametrize("model_key", TESTED)
def test_fused_norms_leave_the_step_unchanged(model_key):
    """The fixed-size step (masked BatchNorm in the heads, fused BatchNorm + ReLU everywhere) with the fused ops
    and with the norm modules (the heads' masked statistics then come from the plain-PyTorch specification)."""
    _assert_close(cached_step(model_key, True), cached_step(model_key, True, fused_norms=False))


@pytest.mark.parametrize("model_key", TESTED)
def test_step_is_close_to_the_recorded_step(model_key):
    want = json.loads(GOLDEN.read_text())[model_key]
    _assert_close(cached_step(model_key, False), want, rel=1e-3, grads=False)


def write_golden() -> None:
    roi_heads.sampling_keys = box_hash_keys
    GOLDEN.write_text(json.dumps({key: run_step(key) for key in TESTED}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    write_golden()
