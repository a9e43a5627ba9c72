"""The fused SyncBatchNorm path over 2 gloo processes (torch.distributed.run) equals one process's BatchNorm on the
whole batch: outputs, input gradients, the summed weight/bias gradients and the running statistics (momentum,
unbiased variance), with and without a row mask, and a SplitAttentionConv2d whose bn0 runs in the fused split-attention
tail, on the CPU kernels and the emulated CUDA kernels."""

import json
import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def test_two_processes_equal_one_process_batch_norm(tmp_path):
    out = tmp_path / "sync.json"
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        os.path.join(HERE, "sync_batch_norm_worker.py"),
        str(out),
    ]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    results = json.loads(out.read_text())
    assert {"cpu/plain", "cpu/relu", "cpu/residual", "cpu/rows", "cpu/split_attention"} <= set(results)
    for name, diffs in results.items():
        for key, value in diffs.items():
            assert value <= 1e-10, f"{name} {key}: {value}"
