"""The detector benchmark and profiler run end to end on a tiny config (a smoke test that keeps them working between
GPU runs; their figures are not checked here)."""

import json

from benchmarks import bench_detector, profile_detector


def test_bench_detector_runs_on_a_tiny_config(tmp_path, capsys):
    out = tmp_path / "det.json"
    bench_detector.main(["--device", "cpu", "--config", "tiny_test", "--batch", "2", "--size", "64x96",
                         "--precisions", "fp32", "--infer-batches", "1", "--iters", "1", "--impls", "fused",
                         "--layouts", "nchw,channels_last", "--no-torchvision", "--out", str(out)])
    rows = json.load(open(out))["results"]
    assert [(r["model"], r["mode"]) for r in rows] == [
        ("tiny_test[fused,nchw]", "train"), ("tiny_test[fused,nchw]", "infer"),
        ("tiny_test[fused,channels_last]", "train"), ("tiny_test[fused,channels_last]", "infer"),
    ]
    assert all(r["ms_per_iter"] > 0 for r in rows)


def test_profile_detector_runs_on_a_tiny_config(tmp_path, capsys):
    profile_detector.main(["--device", "cpu", "--config", "tiny_test", "--batch", "2", "--size", "64x96",
                           "--iters", "1", "--rows", "5", "--out", str(tmp_path)])
    saved = json.load(open(tmp_path / "profile.json"))
    assert set(saved["ms_per_iter"]) == {*profile_detector.PARTS, "forward", "backward", "optimizer"}
    assert (tmp_path / "trace.json").stat().st_size > 0
    assert "Self CPU" in capsys.readouterr().out
