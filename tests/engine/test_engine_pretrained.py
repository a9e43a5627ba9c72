"""Training from a config starts the backbone from backbone.pretrained, loaded before the stem is frozen."""

import os

import pytest
import torch

import resnest_cuda
from detection import train
from detection.build import build_backbone
from detection.configs import get_config
from detection.engine import train as train_engine

pytestmark = pytest.mark.skipif(not all(hasattr(resnest_cuda, n) for n in ("nms", "roi_align", "resnest14")),
                                reason="needs the detection ops and the ResNeSt backbones")

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "real_tiny_config.py")


def test_training_loads_backbone_pretrained(tmp_path, monkeypatch):
    backbone_cfg = get_config(CONFIG).model.backbone
    torch.manual_seed(5)
    state = {k: torch.randn_like(v) * 0.01 + (1.0 if "running_var" in k else 0.0) if v.is_floating_point() else v
             for k, v in build_backbone(backbone_cfg).state_dict().items()}
    torch.save(state, tmp_path / "imagenet.pth")
    built = {}

    def run(self):  # stop once the trainer is set up: the model it would train is what is checked
        built["model"] = self.model
        return {}

    monkeypatch.setattr(train_engine.Trainer, "run", run)
    work_dir = tmp_path / "run"
    args = ["--config", CONFIG, "--data-root", str(tmp_path / "data"), "--work-dir", str(work_dir), "--no-progress",
            "model.backbone.frozen_stages=1", f"model.backbone.pretrained={tmp_path / 'imagenet.pth'}"]
    assert train.main(args) == 0
    log = (work_dir / "train.log").read_text()
    assert f"backbone.pretrained: loaded {len(state)} tensors from {tmp_path / 'imagenet.pth'}" in log
    backbone = built["model"].backbone
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)
    assert not any(p.requires_grad for p in backbone.conv1.parameters())  # frozen after the load
    assert not any(p.requires_grad for p in backbone.layer1.parameters())
    assert all(p.requires_grad for p in backbone.layer2.parameters())
