"""Training from a config starts the backbone from backbone.pretrained; the frozen stem keeps the loaded weights."""

import os

import pytest
import torch

import resnest_cuda
from detection import train
from detection.build import build_backbone
from detection.configs import get_config
from detection.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not all(hasattr(resnest_cuda, n) for n in ("nms", "roi_align", "resnest14")),
                                reason="needs the detection ops and the ResNeSt backbones")

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "real_tiny_config.py")


def test_training_loads_backbone_pretrained(tmp_path):
    backbone_cfg = get_config(CONFIG).model.backbone
    torch.manual_seed(5)
    state = {k: torch.randn_like(v) * 0.01 + (1.0 if "running_var" in k else 0.0) if v.is_floating_point() else v
             for k, v in build_backbone(backbone_cfg).state_dict().items()}
    torch.save(state, tmp_path / "imagenet.pth")
    work_dir = tmp_path / "run"
    args = ["--config", CONFIG, "--data-root", str(tmp_path / "data"), "--work-dir", str(work_dir), "--no-progress",
            "solver.epochs=1", "solver.eval_interval=1",
            "model.backbone.frozen_stages=1", f"model.backbone.pretrained={tmp_path / 'imagenet.pth'}"]
    assert train.main(args) == 0
    log = (work_dir / "train.log").read_text()
    assert f"backbone.pretrained: loaded {len(state)} tensors from {tmp_path / 'imagenet.pth'}" in log
    trained = load_checkpoint(str(work_dir / "latest.pth"))["model"]
    for key in ("conv1.0.weight", "bn1.running_mean", "conv1.6.weight"):  # the frozen stem: loaded, untouched
        torch.testing.assert_close(trained[f"backbone.{key}"], state[key], rtol=0, atol=0)
    assert not torch.equal(trained["backbone.layer4.0.conv3.weight"], state["layer4.0.conv3.weight"])  # trained
