"""The detector benchmark compares at equal work: every model at the same score threshold, the detection count
and FLOPs beside each timing; the torchvision peer runs when torchvision is importable (a stand-in here)."""

import json
import sys
import types

import torch

from benchmarks import bench_detector

TINY = ["--device", "cpu", "--config", "tiny_test", "--batch", "2", "--size", "64x96", "--precisions", "fp32",
        "--infer-batches", "1", "--iters", "1", "--impls", "fused", "--layouts", "nchw"]


class StandInDetector(torch.nn.Module):
    """Takes torchvision's calling conventions: 0-1 images, 1-based labels; returns `max_dets` boxes whose scores
    pass the score threshold it was built with."""

    def __init__(self, num_classes, box_score_thresh, max_dets=100):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.num_classes, self.thresh, self.max_dets = num_classes, box_score_thresh, max_dets

    def forward(self, images, targets=None):
        assert all(im.max() <= 1.0 for im in images)
        feats = [self.conv(im[None]).mean() for im in images]
        if self.training:
            assert all(t["labels"].min() >= 1 for t in targets)
            return {"loss": sum(feats)}
        scores = torch.full((self.max_dets,), 1.0 / self.num_classes)
        keep = scores > self.thresh
        return [{"boxes": torch.zeros(int(keep.sum()), 4) + f, "scores": scores[keep]} for f in feats]


def install_stand_in_torchvision(monkeypatch):
    built = []

    def constructor(weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.05):
        assert weights is None and weights_backbone is None
        built.append(box_score_thresh)
        return StandInDetector(num_classes, box_score_thresh)

    detection = types.ModuleType("torchvision.models.detection")
    for name, _ in bench_detector.TORCHVISION_MODELS.values():
        setattr(detection, name, constructor)
    models = types.ModuleType("torchvision.models")
    models.detection = detection
    torchvision = types.ModuleType("torchvision")
    torchvision.models = models
    for name, module in [("torchvision", torchvision), ("torchvision.models", models),
                         ("torchvision.models.detection", detection)]:
        monkeypatch.setitem(sys.modules, name, module)
    return built


def test_equal_detection_counts_and_flops_beside_every_timing(tmp_path, monkeypatch, capsys):
    built = install_stand_in_torchvision(monkeypatch)
    out = tmp_path / "det.json"
    bench_detector.main(TINY + ["--torchvision", "faster,mask", "--out", str(out)])
    rows = json.load(open(out))["results"]
    assert [(r["model"], r["mode"]) for r in rows] == [
        ("tiny_test[fused,nchw]", "train"), ("tiny_test[fused,nchw]", "infer"),
        ("torchvision_fasterrcnn_resnet50_fpn", "train"), ("torchvision_fasterrcnn_resnet50_fpn", "infer"),
        ("torchvision_maskrcnn_resnet50_fpn", "train"), ("torchvision_maskrcnn_resnet50_fpn", "infer"),
    ]
    assert built == [0.0, 0.0]  # the peers were built at the equal-work threshold
    for r in rows:
        assert r["ms_per_iter"] > 0 and r["gflops"] > 0
        if r["mode"] == "infer":
            # Random heads score every class ~1/(classes + 1): only a threshold of 0 keeps detections everywhere.
            assert r["detections_per_image"] > 0
    ours = next(r for r in rows if r["model"].startswith("tiny_test") and r["mode"] == "infer")
    printed = capsys.readouterr().out
    assert "dets/img" in printed and "GFLOPs" in printed and f"{ours['detections_per_image']:.1f}" in printed


def test_threshold_decides_whether_random_heads_return_detections():
    """Random-init heads score every class about 1 / (classes + 1) (0.25 for the tiny config): above that no
    detection remains, which is why the benchmark defaults to a threshold of 0."""
    images, _ = bench_detector.synthetic_batch(1, (64, 96), 3, False, "cpu")
    counts = {}
    for thr in (0.0, 0.5):
        model = bench_detector.ours("tiny_test", "fused", "cpu", score_thr=thr)[0].eval()
        with torch.no_grad():
            counts[thr] = bench_detector.detections_per_image(model(images))
    assert counts[0.0] > 0 and counts[0.5] == 0
