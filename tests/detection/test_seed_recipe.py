"""The eight seed configs carry mmdetection's recipe around the model: ImageNet initialisation, fp32 training and
evaluation, mmcv's resize, polygon mask targets, and low-quality R-CNN matches only in Mask R-CNN."""

import os
import sys

import pytest

from detection import test
from detection.configs import get_config
from detection.engine import checkpoint as checkpoint_engine
from detection.engine import evaluate as evaluate_engine
from detection.engine import train as train_engine

SEEDS = {
    "faster_rcnn_s50_fpn_syncbn-backbone+head_mstrain-range_1x_coco": ("resnest50", False),
    "faster_rcnn_s101_fpn_syncbn-backbone+head_mstrain-range_1x_coco": ("resnest101", False),
    "mask_rcnn_s50_fpn_syncbn-backbone+head_mstrain_1x_coco": ("resnest50", True),
    "mask_rcnn_s101_fpn_syncbn-backbone+head_mstrain_1x_coco": ("resnest101", True),
    "cascade_rcnn_s50_fpn_syncbn-backbone+head_mstrain-range_1x_coco": ("resnest50", False),
    "cascade_rcnn_s101_fpn_syncbn-backbone+head_mstrain-range_1x_coco": ("resnest101", False),
    "cascade_mask_rcnn_s50_fpn_syncbn-backbone+head_mstrain_1x_coco": ("resnest50", True),
    "cascade_mask_rcnn_s101_fpn_syncbn-backbone+head_mstrain_1x_coco": ("resnest101", True),
}
ENGINE_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine")


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_config_recipe(name):
    depth, masks = SEEDS[name]
    cfg = get_config(name)
    assert cfg.model.backbone.name == depth and cfg.model.backbone.pretrained == f"open-mmlab://{depth}"
    assert cfg.model.backbone.frozen_stages == 1
    assert cfg.solver.amp is False and cfg.solver.eval_amp is False  # fp32, as mmdetection's OptimWrapper
    assert cfg.data.resize_mode == "mmcv"
    assert cfg.data.with_masks is masks and cfg.data.poly2mask is (not masks)
    low_quality = [stage.matcher.match_low_quality for stage in cfg.model.roi_head.stages]
    # Mask R-CNN's R-CNN assigner uses low-quality matches; Faster and both Cascade variants do not.
    assert low_quality == ([True] if name.startswith("mask_rcnn") else [False] * len(low_quality))


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.syspath_prepend(ENGINE_TESTS)
    sys.modules.pop("standin", None)
    from standin import build_standin

    return build_standin, os.path.join(ENGINE_TESTS, "standin_config.py")


@pytest.mark.parametrize("overrides, expected", [((), False), (("solver.eval_amp=true",), True),
                                                 (("solver.amp=true",), False)])
def test_detection_test_evaluates_in_fp32_unless_asked(standin, tmp_path, monkeypatch, overrides, expected):
    build_standin, config = standin
    seen = {}
    # detection.test imports these when it runs: patch them where they are defined.
    monkeypatch.setattr(checkpoint_engine, "load_model_weights", lambda model, path, name=None: {})
    monkeypatch.setattr(evaluate_engine, "evaluate", lambda *args, **kwargs: seen.update(kwargs) or {})
    argv = ["--config", config, "--checkpoint", "unused.pth", "--data-root", str(tmp_path), *overrides]
    assert test.main(argv, model_builder=build_standin) == 0
    assert seen["amp"] is expected


@pytest.mark.parametrize("overrides, expected", [((), False), (("solver.eval_amp=true",), True),
                                                 (("solver.amp=true",), False)])
def test_evaluation_during_training_in_fp32_unless_asked(standin, tmp_path, monkeypatch, overrides, expected):
    from detection import train

    build_standin, config = standin
    seen = {}
    monkeypatch.setattr(train_engine.Trainer, "train_one_epoch", lambda self, epoch, start_step=0: None)
    monkeypatch.setattr(train_engine, "evaluate", lambda *args, **kwargs: seen.update(kwargs) or {})
    argv = ["--config", config, "--data-root", str(tmp_path / "data"), "--work-dir", str(tmp_path / "run"),
            "--no-progress", "solver.epochs=1", *overrides]
    assert train.main(argv, model_builder=build_standin) == 0
    assert seen["amp"] is expected
