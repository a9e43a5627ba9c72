"""What the training loop keeps about its steps without a host synchronisation per step.

A `.item()`, `float(tensor)` or an all-reduce read on the host drains the device queue: the CPU stops queueing the
next step's kernels until the GPU has finished this one. The loop therefore keeps its per-step numbers on the
device and reads them only every `log_interval` iterations (and before a checkpoint is written):

- `LossWindow` sums each loss of the steps since the last log line on the device; `averages()` all-reduces the
  sums over ranks and reads them in one transfer.
- `FiniteWatch` records on the device the first iteration whose losses (or gradient norm) were not all finite and
  those values; `first_bad()` reads it (one transfer, an all-reduce under DDP, so every rank takes the same
  decision). Steps after a non-finite one still run until the next check: their weights are never saved, because
  every checkpoint is preceded by a check.
"""

import torch
import torch.distributed as dist

from . import distributed as dist_utils


def stack_losses(values: dict[str, torch.Tensor]) -> tuple[tuple[str, ...], torch.Tensor]:
    """A step's scalar losses as (sorted names, one detached float32 tensor of their values): built once per step
    and shared by LossWindow and FiniteWatch."""
    names = tuple(sorted(values))
    return names, torch.stack([values[n].detach().float().reshape(()) for n in names])


class LossWindow:
    """Per-name sums of the steps' losses since the last `averages()`, on the device."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, names: tuple[str, ...], stacked: torch.Tensor) -> None:
        for name, value in zip(names, stacked.unbind()):
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + 1

    def averages(self) -> dict[str, float]:
        """Means over the window's steps and over ranks (collective under DDP; every rank must call it at the same
        iteration), as floats; clears the window."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        stacked = torch.stack([self.sums[n] / self.counts[n] for n in names])
        if dist_utils.is_distributed():
            dist.all_reduce(stacked)
            stacked /= dist.get_world_size()
        self.sums, self.counts = {}, {}
        return dict(zip(names, stacked.tolist()))


class FiniteWatch:
    """The first iteration (1-based) with a non-finite value among the step's losses, kept on the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.first = torch.full((), -1, dtype=torch.int64, device=device)
        self.names: tuple[str, ...] = ()
        self.values: torch.Tensor | None = None  # the values of that iteration
        self.where: dict[int, tuple[int, int]] = {}  # iteration -> (epoch, step) since the last check

    def update(self, iteration: int, epoch: int, step: int, names: tuple[str, ...], stacked: torch.Tensor) -> None:
        if self.values is None or names != self.names:
            self.names, self.values = names, torch.zeros_like(stacked)
        newly_bad = (self.first < 0) & ~torch.isfinite(stacked).all()
        self.first = torch.where(newly_bad, iteration, self.first)  # a Python scalar: no host-to-device copy
        self.values = torch.where(newly_bad, stacked, self.values)
        self.where[iteration] = (epoch, step)

    def first_bad(self) -> tuple[int, int, int, str] | None:
        """(iteration, epoch, step, "name=value, ...") of the first non-finite step over all ranks, or None.
        Collective under DDP. Clears the iteration -> (epoch, step) record when every step was finite."""
        first = self.first.clone()
        if dist_utils.is_distributed():
            # the earliest bad iteration of any rank (-1, none, counts as the largest)
            first = torch.where(first < 0, torch.iinfo(torch.int64).max, first)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
            first = torch.where(first == torch.iinfo(torch.int64).max, -1, first)
        iteration = int(first.item())
        if iteration < 0:
            self.where.clear()
            return None
        epoch, step = self.where.get(iteration, (-1, -1))
        if int(self.first.item()) == iteration and self.values is not None:
            described = ", ".join(f"{n}={v}" for n, v in zip(self.names, self.values.tolist()))
        else:
            described = "non-finite on another rank"
        return iteration, epoch, step, described


class DivergenceWatch:
    """Finds losses that grew tenfold: a run that diverges (too high a learning rate for its data) says so before a
    loss becomes non-finite or an empty batch of proposals ends it.

    `update(averages)` takes each log line's averaged losses (host floats, already read) and returns
    (name, value, reference) for every loss whose average exceeds `factor` times its reference: its lowest average
    over the previous `window` log lines, at least `floor` and at least `share` times the lowest total `loss` over
    those lines (a term near zero may grow by ratios that mean nothing: the box loss of the first iterations, before
    the RPN finds positives, grows from almost nothing to a normal share of the total). A loss is reported once per
    run; the first `min_history` log lines only build the history."""

    def __init__(self, factor: float = 10.0, window: int = 5, floor: float = 0.05, share: float = 0.1,
                 min_history: int = 2):
        self.factor, self.window, self.floor, self.min_history = factor, window, floor, min_history
        self.share = share
        self.history: dict[str, list[float]] = {}
        self.reported: set[str] = set()

    def update(self, averages: dict[str, float]) -> list[tuple[str, float, float]]:
        grown = []
        total = self.history.get("loss", [])
        floor = max(self.floor, self.share * min(total)) if total else self.floor
        for name, value in averages.items():
            if not name.startswith("loss") or value != value:  # grad_norm is no loss; NaN is FiniteWatch's
                continue
            history = self.history.setdefault(name, [])
            if len(history) >= self.min_history and name not in self.reported:
                reference = max(min(history), floor)
                if value > self.factor * reference:
                    grown.append((name, value, reference))
                    self.reported.add(name)
            history.append(value)
            del history[: -self.window]
        return grown
