"""End to end with the real detector (the default shapes Mask R-CNN, shrunk): train → checkpoint → resume →
evaluate → demo."""

import os

import pytest
import torch

import resnest_cuda
from detection import demo, test, train
from detection.configs import get_config
from detection.data.build import resolve_root
from detection.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not all(hasattr(resnest_cuda, n) for n in ("nms", "roi_align", "resnest14")),
                                reason="needs the detection ops and the ResNeSt backbones")

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "real_tiny_config.py")


def test_real_model_train_resume_evaluate_demo(tmp_path, capsys):
    data_root = str(tmp_path / "data")
    common = ["--config", CONFIG, "--data-root", data_root, "--no-progress"]
    assert train.main([*common, "--work-dir", str(tmp_path / "full")]) == 0
    assert train.main([*common, "--work-dir", str(tmp_path / "part"), "solver.epochs=1"]) == 0
    assert train.main([*common, "--work-dir", str(tmp_path / "part"), "--resume"]) == 0
    full = load_checkpoint(str(tmp_path / "full" / "latest.pth"))
    part = load_checkpoint(str(tmp_path / "part" / "latest.pth"))
    assert full["epoch"] == part["epoch"] == 2 and full["iteration"] == part["iteration"] == 4
    for name, value in full["model"].items():
        torch.testing.assert_close(part["model"][name], value, atol=1e-6, rtol=0, msg=name)

    capsys.readouterr()
    args = ["--config", CONFIG, "--checkpoint", str(tmp_path / "full" / "latest.pth")]
    assert test.main([*args, "--data-root", data_root, "--out", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("Average Precision") == 12  # bbox and segm, 6 AP lines each
    out_png = str(tmp_path / "demo.png")
    image = os.path.join(resolve_root(get_config(CONFIG).data, data_root), "val", "000000.jpg")
    assert demo.main([*args, "--image", image, "--out", out_png, "--score-thr", "0.0"]) == 0
    with open(out_png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not torch.cuda.is_available() or not resnest_cuda.cuda_kernels_available(),
                    reason="needs a CUDA device and the CUDA kernels")
def test_real_model_trains_and_evaluates_on_cuda(tmp_path, capsys):
    """The loop on a GPU: pinned batches, losses and their finiteness kept on the device, checkpoints, evaluation."""
    data_root = str(tmp_path / "data")
    common = ["--config", CONFIG, "--data-root", data_root, "--no-progress", "--device", "cuda"]
    assert train.main([*common, "--work-dir", str(tmp_path / "run")]) == 0
    state = load_checkpoint(str(tmp_path / "run" / "latest.pth"))
    assert state["iteration"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values()
                                           if v.is_floating_point())
    assert "bbox AP" in capsys.readouterr().out
