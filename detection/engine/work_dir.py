"""The work dir of a run: refuse to overwrite or to silently restart a run, remove what a killed process left,
and cut the metrics back to the point a resumed run continues from.

A work dir "holds a run" when it has a checkpoint (latest.pth or epoch_<n>.pth) or a metrics.jsonl. Without
`resume` such a dir is refused unless `overwrite` is given, which removes the run's files (only the files this
project writes: checkpoints, train.log, metrics.jsonl, tensorboard/, results_epoch_<n>.json). With `resume`,
latest.pth must exist.
"""

import json
import os
import re
import shutil

from .checkpoint import LATEST
from .errors import MissingPathError, UserError

_RUN_FILE = re.compile(r"(latest\.pth|epoch_\d+\.pth|train\.log|metrics\.jsonl|results_epoch_\d+\.json)")
_TEMP_FILE = re.compile(r"\..+\.tmp(\d+)")  # atomic_save's temporaries: .<name>.tmp<pid>


def run_files(work_dir: str) -> list[str]:
    """Names of the files of a previous run in `work_dir` (tensorboard/ included)."""
    if not os.path.isdir(work_dir):
        return []
    return sorted(n for n in os.listdir(work_dir) if _RUN_FILE.fullmatch(n) or n == "tensorboard")


def check_work_dir(work_dir: str, resume: bool, overwrite: bool) -> None:
    """Refuse a resume without a checkpoint and a fresh start over a previous run (unless `overwrite`, which
    removes that run's files). Call on rank 0 before logging opens train.log."""
    latest = os.path.join(work_dir, LATEST)
    if resume:
        if not os.path.isfile(latest):
            found = run_files(work_dir)
            what = f"it holds {', '.join(found)}" if found else "it holds no run"
            raise MissingPathError(f"--resume: no checkpoint {latest} ({what}); check --work-dir, or start a new "
                                   "run without --resume")
        return
    previous = [n for n in run_files(work_dir) if n.endswith(".pth") or n == "metrics.jsonl"]
    if not previous:
        return
    if not overwrite:
        raise UserError(f"work dir {work_dir} already holds a run ({', '.join(previous)}); continue it with "
                        "--resume, start over with --overwrite (removes its checkpoints, logs and metrics), or "
                        "choose another --work-dir")
    for name in run_files(work_dir):
        path = os.path.join(work_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def remove_stale_temporaries(work_dir: str) -> list[str]:
    """Delete the `.<name>.tmp<pid>` files of processes that no longer run (a kill during a save); returns them."""
    if not os.path.isdir(work_dir):
        return []
    removed = []
    for name in os.listdir(work_dir):
        match = _TEMP_FILE.fullmatch(name)
        if match and not _process_alive(int(match.group(1))):
            os.remove(os.path.join(work_dir, name))
            removed.append(name)
    return sorted(removed)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def truncate_metrics(work_dir: str, iteration: int) -> int:
    """Keep only the metrics.jsonl records with step <= `iteration` (those a resumed run does not repeat);
    returns how many were removed. A torn last line (a kill during a write) is removed too."""
    path = os.path.join(work_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return 0
    kept, removed = [], 0
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                removed += 1
                continue
            if record.get("step", 0) <= iteration:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                removed += 1
    if removed:
        tmp = os.path.join(work_dir, f".metrics.jsonl.tmp{os.getpid()}")
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return removed
