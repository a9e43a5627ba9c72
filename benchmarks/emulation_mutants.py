"""Shows that the emulated-CUDA comparison suite fails on real kernel bugs: plants known bugs in copies of the CUDA
sources, rebuilds the emulated kernels from each copy and runs tests/test_emulated_cuda.py against each build.

Each mutant is one textual change to one .cu/.cuh file (it must match exactly once, so a source edit that moves
the code makes this script fail instead of testing nothing). The unchanged sources are built and tested first:
they must pass, or the table would mean nothing. A mutant counts as caught when the suite fails (a wrong result,
results that differ between emulator schedules, or an error the emulator raises) or the test process crashes.
The table gives, for each mutant, the failing tests and the emulator settings the first failures came under.

    python -m benchmarks.emulation_mutants                  # every mutant (about 10 minutes on 2 cores)
    python -m benchmarks.emulation_mutants --only warp_sum_offset --jobs 2 --json out.json

The copies are built with `RESNEST_EMULATE_CUDA=only python setup.py build_ext` in one scratch tree, so a mutant
recompiles only the file it changes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join("tests", "test_emulated_cuda.py")


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    before: str
    after: str
    bug: str


SPLAT = "csrc/split_attention/cuda/split_attention_cuda.cu"
MUTANTS = [
    Mutant(
        "group_sum_no_barrier",
        SPLAT,
        "  if (lane == 0) shared[warp] = v;\n  __syncthreads();\n",
        "  if (lane == 0) shared[warp] = v;\n",
        "block reduction: the __syncthreads between the warps' partial sums and their total dropped",
    ),
    Mutant(
        "group_sum_no_leading_barrier",
        SPLAT,
        "  __syncthreads();  // shared may still be read from a previous call\n",
        "",
        "block reduction: the __syncthreads before the partial sums are written dropped (a warp that runs ahead "
        "overwrites them while the previous reduction still reads them)",
    ),
    Mutant(
        "warp_sum_offset",
        SPLAT,
        "for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync",
        "for (int offset = 8; offset > 0; offset >>= 1) v += __shfl_down_sync",
        "warp reduction: first shuffle offset 8 instead of 16 (half the warp summed)",
    ),
    Mutant(
        "reduce_guard_off_by_one",
        SPLAT,
        "        const bool active = j < d.C;\n",
        "        const bool active = j <= d.C;\n",
        "NCHW reduction kernel: channel guard j <= C (one row past the channels)",
    ),
    Mutant(
        "roi_align_no_syncwarp_after_bin",
        "csrc/roi_align/cuda/roi_align_cuda.cu",
        "                                          count);\n    }\n"
        "    __syncwarp();  // every lane is done with the taps before the next bin overwrites them\n",
        "                                          count);\n    }\n",
        "channels_last RoIAlign forward: the __syncwarp that ends the warp's use of the shared taps dropped",
    ),
    Mutant(
        "bin_taps_no_syncwarp_after_fill",
        "csrc/roi_align/cuda/bin_taps.cuh",
        "      t.xs[i - g.grid_h] = a;\n    }\n  }\n  __syncwarp();\n",
        "      t.xs[i - g.grid_h] = a;\n    }\n  }\n",
        "channels_last RoIAlign: the __syncwarp after the lanes fill the shared taps dropped",
    ),
    Mutant(
        "nms_keep_no_barrier",
        "csrc/nms/cuda/nms_cuda.cu",
        "    __syncthreads();  // removed[tile + 1] is final; diagonal may be restaged\n",
        "",
        "NMS sweep: the __syncthreads that ends a tile (suppressed bits of the next tile final) dropped",
    ),
    Mutant(
        "nms_mask_bound_off_by_one",
        "csrc/nms/cuda/nms_cuda.cu",
        "  for (int j = start; j < col_size; ++j) {\n",
        "  for (int j = start; j < col_size - 1; ++j) {\n",
        "NMS IoU mask: the last column box of each tile never compared",
    ),
]


def copy_sources(dest: str) -> None:
    """The files the emulated build needs: setup.py, build_tools/, csrc/ and the Python package (no built
    libraries)."""
    shutil.copy2(os.path.join(ROOT, "setup.py"), dest)
    for folder in ("build_tools", "csrc"):
        shutil.copytree(os.path.join(ROOT, folder), os.path.join(dest, folder))
    shutil.copytree(
        os.path.join(ROOT, "resnest_cuda"),
        os.path.join(dest, "resnest_cuda"),
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )


def build(tree: str, jobs: int, log: str) -> str:
    """Builds _C_emu in `tree`; returns the library's path."""
    lib_dir = os.path.join(tree, "lib")
    env = dict(os.environ, RESNEST_EMULATE_CUDA="only", MAX_JOBS=str(jobs))
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--build-lib", lib_dir],
            cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"the emulated build failed in {tree}; see {log}")
    found = [
        os.path.join(dp, n) for dp, _, names in os.walk(lib_dir) for n in names if n.startswith("_C_emu")
    ]
    if len(found) != 1:
        raise RuntimeError(f"expected one _C_emu library under {lib_dir}, found {found}")
    return found[0]


SETTING = re.compile(r"under (\{[^}]*\})")


def run_suite(library: str, timeout: int) -> dict:
    """Runs the comparison suite against `library` in a fresh process."""
    env = dict(os.environ, RESNEST_EMU_LIBRARY=library)
    env.pop("RESNEST_EMU_ERRORS", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", "--tb=line", SUITE]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), None
    seconds = time.time() - start
    failed = sorted(set(re.findall(r"^FAILED (\S+)", out, flags=re.M)))
    passed = re.search(r"(\d+) passed", out)
    settings = sorted(set(SETTING.findall(out)))
    if rc is None:
        verdict = "caught (timed out)"
    elif rc < 0:
        # The faulthandler's traceback names the test the process died in.
        where = re.findall(r"test_emulated_cuda\.py\", line \d+ in (test_\w+)", out)
        verdict = f"caught (process died, signal {-rc}{', in ' + where[-1] if where else ''})"
    elif rc == 0:
        verdict = "MISSED"
    elif failed:
        verdict = "caught"
    else:
        verdict = f"error (pytest exit {rc})"
    return {
        "clean": rc == 0,
        "verdict": verdict,
        "failed": failed,
        "passed": int(passed.group(1)) if passed else 0,
        "settings": settings,
        "seconds": round(seconds, 1),
        "tail": out[-1500:],
        "last_lines": [line for line in out.splitlines() if line.strip()][-3:],
    }


def apply(tree: str, mutant: Mutant) -> str:
    """Applies `mutant` in `tree`; returns the original text of the file."""
    path = os.path.join(tree, mutant.path)
    with open(path) as f:
        text = f.read()
    count = text.count(mutant.before)
    if count != 1:
        raise RuntimeError(f"mutant {mutant.name}: the text to change occurs {count} times in {mutant.path}")
    with open(path, "w") as f:
        f.write(text.replace(mutant.before, mutant.after))
    return text


def restore(tree: str, mutant: Mutant, text: str) -> None:
    with open(os.path.join(tree, mutant.path), "w") as f:
        f.write(text)


def table(rows: list[dict]) -> str:
    lines = [
        "| mutant | planted bug | result | failing tests | first failures under | suite time |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        settings = "; ".join(r["settings"][:4]) or "-"
        lines.append(
            f"| `{r['name']}` | {r['bug']} | {r['verdict']} | {len(r['failed'])} of {len(r['failed']) + r['passed']}"
            f" | {settings} | {r['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", default=[], help="run only the named mutant (repeatable)")
    p.add_argument("--jobs", type=int, default=2, help="compile jobs (MAX_JOBS)")
    p.add_argument("--timeout", type=int, default=900, help="seconds one suite run may take")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--keep", action="store_true", help="keep the scratch tree")
    args = p.parse_args(argv)
    names = {m.name for m in MUTANTS}
    unknown = [n for n in args.only if n not in names]
    if unknown:
        p.error(f"--only: unknown mutant(s) {unknown}; known: {sorted(names)}")
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]

    tree = tempfile.mkdtemp(prefix="resnest_mutants_")
    rows = []
    try:
        copy_sources(tree)
        # Every mutant's text must be found before anything is built.
        for m in chosen:
            restore(tree, m, apply(tree, m))
        start = time.time()
        library = build(tree, args.jobs, os.path.join(tree, "build_base.log"))
        print(f"built the unchanged sources in {time.time() - start:.0f} s", flush=True)
        base = run_suite(library, args.timeout)
        print(f"unchanged sources: {base['passed']} passed, {len(base['failed'])} failed in {base['seconds']:.0f} s",
              flush=True)
        if not base["clean"]:
            print(base["tail"])
            print("the suite fails on the unchanged sources: no mutant can be judged", file=sys.stderr)
            return 2
        for m in chosen:
            text = apply(tree, m)
            try:
                start = time.time()
                mutated = build(tree, args.jobs, os.path.join(tree, f"build_{m.name}.log"))
                built = time.time() - start
                saved = os.path.join(tree, f"{m.name}.so")
                shutil.copy2(mutated, saved)
            finally:
                restore(tree, m, text)
            result = run_suite(saved, args.timeout)
            row = {"name": m.name, "file": m.path, "bug": m.bug, "build_seconds": round(built, 1), **result}
            rows.append(row)
            print(f"{m.name}: {row['verdict']} ({len(row['failed'])} failing, rebuilt in {built:.0f} s, "
                  f"suite {row['seconds']:.0f} s)", flush=True)
            if not row["failed"]:
                print("    " + "\n    ".join(row["last_lines"]), flush=True)
    finally:
        if args.keep:
            print(f"scratch tree kept: {tree}")
        else:
            shutil.rmtree(tree, ignore_errors=True)
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{k: v for k, v in r.items() if k not in ("tail", "clean")} for r in rows], f, indent=1)
    return 0 if all(r["verdict"].startswith("caught") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
