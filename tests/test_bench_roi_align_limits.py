"""The RoIAlign limits benchmark runs (a smoke test; its times are not checked here, they are a benchmark)."""

from benchmarks import bench_roi_align_limits


def test_bench_roi_align_limits_runs(tmp_path, capsys):
    rows = bench_roi_align_limits.main(["--device", "cpu", "--iters", "1", "--output-size", "2", "--channels", "2",
                                        "--out", str(tmp_path / "limits.json")])
    assert [r["roi"] for r in rows] == list(bench_roi_align_limits.ROIS)
    assert all(r["ms"] > 0 for r in rows)
    assert (tmp_path / "limits.json").stat().st_size > 0
