"""Peak GPU memory in the training log (mmdetection's `memory`, MB) and images/s printed by detection.test."""

import json
import os

import pytest
import torch
from standin import build_standin

from detection import test, train
from detection.engine import train as train_engine
from detection.engine.resources import InferenceTimer, peak_memory_mb

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standin_config.py")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_peak_memory_mb(device):
    device = torch.device(device)
    if device.type != "cuda":
        assert peak_memory_mb(device) is None
        return
    peak_memory_mb(device)  # reset
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)
    assert peak_memory_mb(device) >= 64
    del block
    assert peak_memory_mb(device) < 64  # the peak was reset by the previous call


class FakeClock:
    def __init__(self, step):
        self.now, self.step = 0.0, step

    def __call__(self):
        self.now += self.step  # each reading is `step` seconds after the previous one
        return self.now


def test_inference_timer_skips_warmup_and_counts_images():
    timer = InferenceTimer(torch.device("cpu"), warmup_images=5, clock=FakeClock(0.5))
    assert timer.images_per_second() is None and "not measured" in timer.summary(2)
    for _ in range(5):  # batches of 2: those starting at images 0, 2, 4 are warm-up
        with timer.measure(2):
            pass
    assert (timer.seen, timer.timed_images) == (10, 4)
    assert timer.seconds == pytest.approx(1.0) and timer.images_per_second() == pytest.approx(4.0)
    assert timer.summary(2).startswith("inference speed: 4.00 images/s (4 images in 1.00 s after 6 warm-up images")
    with pytest.raises(ValueError, match="warmup_images"):
        InferenceTimer(torch.device("cpu"), warmup_images=-1)


def test_memory_in_log_lines_and_fps_in_test(tmp_path, capsys, monkeypatch):
    data_root = str(tmp_path / "data")
    common = ["--config", CONFIG, "--data-root", data_root, "--no-progress", "solver.epochs=1"]
    assert train.main([*common, "--work-dir", str(tmp_path / "cpu")], model_builder=build_standin) == 0
    records = [json.loads(line) for line in open(tmp_path / "cpu" / "metrics.jsonl")]
    train_records = [r for r in records if r["type"] == "train"]
    assert train_records and all("memory" not in r for r in train_records)  # absent on a CPU
    assert " memory " not in open(tmp_path / "cpu" / "train.log").read()

    monkeypatch.setattr(train_engine, "peak_memory_mb", lambda device: 1234)  # what a CUDA device reports
    assert train.main([*common, "--work-dir", str(tmp_path / "gpu")], model_builder=build_standin) == 0
    records = [json.loads(line) for line in open(tmp_path / "gpu" / "metrics.jsonl")]
    assert all(r["memory"] == 1234 for r in records if r["type"] == "train")
    assert "memory 1234 MB eta" in open(tmp_path / "gpu" / "train.log").read()

    capsys.readouterr()
    args = ["--config", CONFIG, "--checkpoint", str(tmp_path / "cpu" / "latest.pth"), "--data-root", data_root]
    assert test.main(args, model_builder=build_standin) == 0
    printed = capsys.readouterr().out
    line = next(s for s in printed.splitlines() if s.startswith("inference speed:"))
    # 8 val images one per batch (data.test_images_per_gpu=1): 5 warm-up images, 3 timed
    assert "images/s (3 images in" in line and "after 5 warm-up images; batch 1, cpu" in line
    assert float(line.split()[2]) > 0
