"""Run logging: console + train.log on rank 0, JSON-lines metrics and TensorBoard scalars in the work dir."""

import json
import logging
import os
import sys

from tqdm import tqdm


class _TqdmHandler(logging.StreamHandler):
    """Writes through tqdm so log lines do not break an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise into the training loop
            self.handleError(record)


def progress_bar(iterable, enabled: bool, **kwargs) -> tqdm:
    """A tqdm bar on stderr, shown only when `enabled` and stderr is a terminal: in a redirected log the periodic
    log lines are the progress report (a bar there would be reprinted, stale, after every line)."""
    return tqdm(iterable, disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True, mininterval=0.5,
                **kwargs)


def setup_logging(work_dir: str | None, is_main: bool) -> logging.Logger:
    """Configure the `detection` logger: INFO to stderr and <work_dir>/train.log on rank 0, errors only elsewhere."""
    log = logging.getLogger("detection")
    log.handlers.clear()
    log.setLevel(logging.INFO if is_main else logging.ERROR)
    log.propagate = False
    formatter = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    console = _TqdmHandler(sys.stderr)
    console.setFormatter(formatter)
    log.addHandler(console)
    if is_main and work_dir:
        os.makedirs(work_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(work_dir, "train.log"))
        file_handler.setFormatter(formatter)
        log.addHandler(file_handler)
    return log


class MetricsWriter:
    """Appends one JSON object per record to metrics.jsonl and mirrors numeric fields as TensorBoard scalars
    (`<kind>/<name>` at `step`). A no-op off rank 0. `purge_step` (a resumed run: its first new step) drops the
    TensorBoard events of a previous run at or after that step, so resumed curves do not repeat steps."""

    def __init__(self, work_dir: str, enabled: bool, purge_step: int | None = None):
        self.enabled = enabled
        self.file = None
        self.tensorboard = None
        if not enabled:
            return
        os.makedirs(work_dir, exist_ok=True)
        self.file = open(os.path.join(work_dir, "metrics.jsonl"), "a")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.tensorboard = SummaryWriter(os.path.join(work_dir, "tensorboard"), purge_step=purge_step)

    def write(self, kind: str, step: int, values: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"type": kind, "step": step, **values}) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
