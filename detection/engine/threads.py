"""How many CPU threads a training process uses: intra-op threads and data-loader workers chosen from the cores
this process may run on (its CPU affinity) minus what other processes are using of them right now (sampled from
/proc/stat over a fraction of a second; the 1-minute load average where /proc/stat is missing, which lags: a run
started just after another one ended would still see the old load).

torch's default, one intra-op thread per core of the machine, is right on an idle machine and badly wrong on a
busy one: with another process on a 2-core machine the default run became many times slower, because every op's
threads wait for the slowest one. An explicit choice (`--threads N`, or OMP_NUM_THREADS in the environment) is
kept as given.

Measured on the shared 2-core development machine while other jobs kept it busy (load average 15-17; 2026-12-02),
the default config shrunk to one epoch of 8 iterations (32 train images at batch 4), runs interleaved A B A B A:
the automatic choice (1 intra-op thread, 0 workers) trained the epoch in 10.6 / 10.2 / 10.8 s, torch's default of
2 intra-op threads (`--threads 2`, also 0 workers) in 155.7 / 130.7 s. On an idle 2-core machine the rule gives
torch's default of 2 threads and the default config's 1 worker, the settings of the published default-run
timing; the full default run was not re-timed with the new code.
"""

import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ThreadChoice:
    threads: int  # intra-op threads of this process
    workers: int  # data-loader worker processes of this process
    cores: int  # cores in this process's affinity mask
    busy: float  # cores' worth of CPU time other processes used when the run started
    reason: str  # where `threads` came from

    def describe(self) -> str:
        return (f"CPU threads: {self.threads} intra-op ({self.reason}; {self.cores} cores available, "
                f"{self.busy:.1f} busy with other processes), {self.workers} data worker(s) per process")


def affinity_cpus() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def _cpu_times(cpus: set[int]) -> dict[str, tuple[int, int]]:
    """(total, idle + iowait) jiffies of each core of `cpus`, from /proc/stat."""
    times = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
                times[name] = (sum(values), values[3] + values[4])
    return times


def busy_cores(cpus: set[int], interval: float = 0.3) -> float:
    """Cores' worth of `cpus` other processes used over `interval` seconds (this process sleeps meanwhile)."""
    try:
        first = _cpu_times(cpus)
        time.sleep(interval)
        second = _cpu_times(cpus)
    except (OSError, ValueError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):  # not on this platform
            return 0.0
    busy = 0.0
    for name, (total, idle) in second.items():
        elapsed = total - first[name][0]
        if elapsed > 0:
            busy += 1 - (idle - first[name][1]) / elapsed
    return busy


def choose_threads(requested: int, config_workers: int, local_processes: int = 1, on_cuda: bool = False,
                   cores: int | None = None, busy: float | None = None) -> ThreadChoice:
    """Threads and workers for one of `local_processes` processes on this machine (`cores` and `busy` are
    measured when not given).

    free cores = cores − busy (rounded, at least 1), shared equally by the local processes. Intra-op threads:
    `requested` if > 0, else the OMP_NUM_THREADS value if set, else the free cores. Workers: at most
    `config_workers`; on a CPU run at most free − 1 (the main process computes on the rest), on CUDA at most the
    free cores."""
    cpus = affinity_cpus()
    cores = len(cpus) if cores is None else cores
    busy = busy_cores(cpus) if busy is None else busy
    free = max(1, max(1, round(cores - busy)) // max(1, local_processes))
    if requested > 0:
        threads, reason = requested, "--threads"
    elif os.environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        threads, reason = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        threads, reason = free, "free cores"
    workers = min(config_workers, free if on_cuda else free - 1)
    return ThreadChoice(threads=threads, workers=max(0, workers), cores=cores, busy=busy, reason=reason)
