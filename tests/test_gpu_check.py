"""benchmarks/gpu_check.sh --dry-run: every step of the GPU check runs on the CPU at tiny sizes, in order, and the
results come back as three files (summary.txt, summary.json, logs.tar.gz)."""

import json
import os
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["env", "build", "tests", "memcheck", "racecheck", "bench_split_attention", "bench_detection_ops",
         "bench_backbone", "bench_detector", "profile", "syncs", "cuda_graph"]


def run_check(out: Path, budget_s: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_BUDGET_S": str(budget_s)}
    return subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=budget_s + 120)


def test_dry_run_runs_every_step_and_bundles_the_results(tmp_path):
    result = run_check(tmp_path, 400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs.tar.gz", "summary.json", "summary.txt"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mode"] == "dry-run"
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert all(s["status"] == "ok" for s in summary["steps"]), summary["steps"]
    notes = {s["step"]: s["note"] for s in summary["steps"]}
    assert "collected" in notes["tests"] and "0 mismatches" in notes["memcheck"]
    # The table is what the output ends with.
    table = (tmp_path / "summary.txt").read_text()
    assert result.stdout.rstrip().endswith(table.rstrip())
    with tarfile.open(tmp_path / "logs.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {f"{s}.log" for s in STEPS} <= names
    assert {"bench_split_attention.json", "bench_detection_ops.json", "bench_backbone.json", "bench_detector.json",
            "profile.json", "cuda_graph.json", "summary.json"} <= names


def test_steps_beyond_the_budget_are_skipped_not_run(tmp_path):
    result = run_check(tmp_path, 6)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert summary["steps"][-1]["status"] == "skipped" and "no time left" in summary["steps"][-1]["note"]
    assert result.returncode in (0, 1)  # 1 only if the environment step itself ran out of its 6 s


def test_unknown_argument_is_refused():
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--bogus"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr
