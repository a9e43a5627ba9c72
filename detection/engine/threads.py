"""How many CPU threads a training process uses: intra-op threads and data-loader workers chosen from the cores
this process may run on (its CPU affinity) minus the load other processes already put on them.

torch's default, one intra-op thread per core of the machine, is right on an idle machine and badly wrong on a
busy one: with another process on a 2-core machine the default run became many times slower, because every op's
threads wait for the slowest one. An explicit choice (`--threads N`, or OMP_NUM_THREADS in the environment) is
kept as given.
"""

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ThreadChoice:
    threads: int  # intra-op threads of this process
    workers: int  # data-loader worker processes of this process
    cores: int  # cores in this process's affinity mask
    load: float  # 1-minute load average when the run started
    reason: str  # where `threads` came from

    def describe(self) -> str:
        return (f"CPU threads: {self.threads} intra-op ({self.reason}; {self.cores} cores available, load "
                f"{self.load:.1f}), {self.workers} data worker(s) per process")


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def current_load() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on this platform
        return 0.0


def choose_threads(requested: int, config_workers: int, local_processes: int = 1, on_cuda: bool = False,
                   cores: int | None = None, load: float | None = None) -> ThreadChoice:
    """Threads and workers for one of `local_processes` processes on this machine.

    free cores = cores − load (rounded, at least 1), shared equally by the local processes. Intra-op threads:
    `requested` if > 0, else the OMP_NUM_THREADS value if set, else the free cores. Workers: at most
    `config_workers`; on a CPU run at most free − 1 (the main process computes on the rest), on CUDA at most the
    free cores."""
    cores = available_cores() if cores is None else cores
    load = current_load() if load is None else load
    free = max(1, round(cores - load)) // max(1, local_processes)
    free = max(1, free)
    if requested > 0:
        threads, reason = requested, "--threads"
    elif os.environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        threads, reason = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        threads, reason = free, "free cores"
    workers = min(config_workers, free if on_cuda else free - 1)
    return ThreadChoice(threads=threads, workers=max(0, workers), cores=cores, load=load, reason=reason)
