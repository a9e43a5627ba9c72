"""Static statistics of the compiled CUDA kernels (sm_90): registers, spills, shared memory, SASS size, MUFU ops and
64-bit integer divisions, per kernel and template instance. Needs no GPU.

Each csrc/**/*.cu is compiled by .ci/check_cuda.sh (the same flags and stand-in header as the CI compile check)
with `-Xptxas -v`, its object kept, and disassembled with `cuobjdump -sass`.

    python -m benchmarks.kernel_stats                          # every .cu, markdown table on stdout
    python -m benchmarks.kernel_stats --sources csrc/split_attention/cuda/split_attention_cuda.cu \
        --filter 'combine|input_backward' --json out.json

cuobjdump and nvdisasm come with a full CUDA toolkit; where only nvcc is installed, take them from the
`nvidia-cuda-cuobjdump` and `nvidia-cuda-nvdisasm` wheels (unzip both into .tools/, ignored by git; the binaries
land in .tools/nvidia/cu13/bin).

What the columns mean:
- regs, spill st/ld (bytes), smem (static bytes): from ptxas.
- SASS: instructions of the kernel, its out-of-line subroutines included, NOPs excluded.
- MUFU: every MUFU.* instruction (EX2, RCP, RSQ, LG2, ...), all paths, subroutines included.
- div64: call sites of the 64-bit integer division/modulo routine. nvcc inlines a 32-bit path (I2F.U32.RP,
  MUFU.RCP, IMAD.HI) for operands whose high words are zero and CALLs an out-of-line routine (the only code with
  I2F.U64.RP) otherwise; a call site is counted when its target contains I2F.U64.RP. "in loops": sites inside the
  address range of a backward branch (any loop, the grid-stride loop included).
- instr/elem, MUFU/elem (split-attention elementwise kernels only): static instructions and MUFU ops of the
  innermost loop that stores output vectors (a 16-byte STG when V > 1, any STG when V == 1; the grid-stride loop
  in kernels with one flat loop, the loop over r in those that write R outputs per input vector), divided by the
  elements one pass of it stores (V, the first template argument, times its output stores). These are static
  counts: every branch of the body is counted once, a loop nested inside it (over the radix, when it does not
  store) counts its body once (or as often as the compiler unrolled it), the work outside it (once per row or
  per pixel) is not counted, nor is the 64-bit division routine. They measure code on the per-element path, not
  executed instructions.
"""

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Kernels whose grid-stride loop produces V output elements per iteration, V being the first template argument.
ELEMENTWISE_KERNELS = ("combine_kernel", "input_backward_kernel", "combine_nchw_kernel", "combine_nhwc_kernel",
                       "input_backward_nchw_kernel", "input_backward_nhwc_kernel")

_PTXAS_ENTRY = re.compile(r"Compiling entry function '(\S+)' for")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")
_SASS_FUNCTION = re.compile(r"^\s*Function : (\S+)")
_SASS_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_TARGET = re.compile(r"0x([0-9a-f]+)$")


@dataclass
class Kernel:
    mangled: str
    name: str = ""
    source: str = ""
    registers: int = 0
    stack_bytes: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    smem_bytes: int = 0
    sass_instructions: int = 0
    mufu: dict = field(default_factory=dict)
    div64_sites: int = 0
    div64_in_loops: int = 0
    vector: int | None = None
    elements_per_iteration: int | None = None
    loop_instructions: int | None = None
    loop_mufu: int | None = None

    @property
    def mufu_total(self):
        return sum(self.mufu.values())


def parse_ptxas(log):
    """ptxas -v output -> {mangled name: dict(registers, stack_bytes, spill_stores, spill_loads, smem_bytes)}."""
    out, current = {}, None
    for line in log.splitlines():
        if m := _PTXAS_ENTRY.search(line):
            current = out.setdefault(m.group(1), dict(registers=0, stack_bytes=0, spill_stores=0, spill_loads=0,
                                                      smem_bytes=0))
        elif current is None:
            continue
        elif m := _PTXAS_SPILL.search(line):
            current.update(stack_bytes=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif m := _PTXAS_USED.search(line):
            current["registers"] = int(m.group(1))
            if s := _PTXAS_SMEM.search(line):
                current["smem_bytes"] = int(s.group(1))
    return out


def parse_sass(text):
    """cuobjdump -sass output -> {mangled name: [(address, instruction text without predicate-free padding)]}."""
    out, current = {}, None
    for line in text.splitlines():
        if m := _SASS_FUNCTION.match(line):
            current = out.setdefault(m.group(1), [])
        elif current is not None and (m := _SASS_INSTR.match(line)):
            current.append((int(m.group(1), 16), m.group(2)))
    return out


def _opcode(instr):
    """The opcode of an instruction, its predicate guard dropped (`@!P0 MUFU.EX2 R1, R2` -> `MUFU.EX2`)."""
    parts = instr.split()
    if parts and parts[0].startswith("@"):
        parts = parts[1:]
    return parts[0] if parts else ""


def _branch(instr):
    """(kind, target address) of a BRA or CALL.REL.NOINC with an immediate target, else None."""
    op = _opcode(instr)
    kind = "BRA" if op.startswith("BRA") else "CALL" if op.startswith("CALL.REL") else None
    m = _TARGET.search(instr) if kind else None
    return (kind, int(m.group(1), 16)) if m else None


def analyse_sass(instrs, vector=None):
    """Counts over one function's SASS; see the module docstring for what each count means."""
    real = [(a, i) for a, i in instrs if _opcode(i) != "NOP"]
    by_addr = {a: k for k, (a, _) in enumerate(real)}
    mufu = {}
    for _, i in real:
        op = _opcode(i)
        if op.startswith("MUFU."):
            mufu[op[5:]] = mufu.get(op[5:], 0) + 1

    def routine_has_div64(target):
        for _, i in real[by_addr.get(target, len(real)):]:
            op = _opcode(i)
            if op.startswith("I2F.U64"):
                return True
            if op.startswith("RET"):
                return False
        return False

    loops = []  # (head, backward branch) address ranges; the self-branch that pads a function's end excluded
    calls = []
    for a, i in real:
        br = _branch(i)
        if br is None:
            continue
        kind, target = br
        if kind == "BRA" and target < a:
            loops.append((target, a))
        elif kind == "CALL" and routine_has_div64(target):
            calls.append(a)
    in_loop = [a for a in calls if any(lo <= a <= hi for lo, hi in loops)]
    stats = dict(sass_instructions=len(real), mufu=mufu, div64_sites=len(calls), div64_in_loops=len(in_loop))
    if vector and loops:
        def stores(lo, hi):
            return sum(_opcode(i).startswith("STG") and (vector == 1 or ".128" in _opcode(i))
                       for a, i in real if lo <= a <= hi)

        writing = [(lo, hi) for lo, hi in loops if stores(lo, hi)]
        if writing:
            lo, hi = min(writing, key=lambda r: r[1] - r[0])
            body = [i for a, i in real if lo <= a <= hi]
            stats.update(vector=vector, elements_per_iteration=vector * stores(lo, hi), loop_instructions=len(body),
                         loop_mufu=sum(_opcode(i).startswith("MUFU.") for i in body))
    return stats


def short_name(demangled):
    """`void resnest_cuda::(anonymous namespace)::k<8, true, c10::Half>(args)` -> `k<8, true, c10::Half>`."""
    name = demangled.replace("(anonymous namespace)::", "")
    if name.startswith("void "):
        name = name[5:]
    depth = 0
    for pos, ch in enumerate(name):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            name = name[:pos]
            break
    return name.removeprefix("resnest_cuda::")


def first_template_int(name):
    m = re.search(r"<\s*(\d+)\s*[,>]", name)
    return int(m.group(1)) if m else None


def demangle(names):
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if tool is None:
        return dict(zip(names, names))
    res = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True)
    return dict(zip(names, res.stdout.splitlines()))


def find_tool(name, explicit=None):
    candidates = [explicit, os.environ.get(name.upper()), shutil.which(name)]
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            candidates.append(os.path.join(home, "bin", name))
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.join(os.path.dirname(os.path.realpath(nvcc)), name))
    candidates.append(str(ROOT / ".tools" / "nvidia" / "cu13" / "bin" / name))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def compile_source(src, obj_dir):
    """Compiles one .cu through .ci/check_cuda.sh with -Xptxas -v; returns (ptxas log, object path)."""
    env = dict(os.environ, CHECK_CUDA_EXTRA_FLAGS="-Xptxas -v", CHECK_CUDA_OBJ_DIR=str(obj_dir))
    res = subprocess.run(["bash", str(ROOT / ".ci" / "check_cuda.sh"), src], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"compiling {src} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    obj = Path(obj_dir) / (src.removesuffix(".cu").replace("/", "_") + ".o")
    return res.stdout + res.stderr, obj


def collect(src, obj_dir, cuobjdump):
    log, obj = compile_source(src, obj_dir)
    env = dict(os.environ, PATH=os.path.dirname(cuobjdump) + os.pathsep + os.environ.get("PATH", ""))
    sass = subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True, text=True, check=True, env=env).stdout
    return src, parse_ptxas(log), parse_sass(sass)


def build_kernels(results):
    kernels = []
    for src, ptxas, sass in results:
        names = demangle(sorted(set(ptxas) | set(sass)))
        for mangled in sorted(names, key=lambda m: short_name(names[m])):
            k = Kernel(mangled=mangled, name=short_name(names[mangled]), source=src, **ptxas.get(mangled, {}))
            base = k.name.split("<")[0].split("::")[-1]
            vector = first_template_int(k.name) if base in ELEMENTWISE_KERNELS else None
            for key, value in analyse_sass(sass.get(mangled, []), vector).items():
                setattr(k, key, value)
            kernels.append(k)
    return kernels


def _per_element(count, elements):
    return f"{count / elements:.2f}" if count is not None and elements else "—"


def markdown(kernels):
    lines = ["| kernel | regs | spill st/ld B | smem B | SASS | MUFU | div64 (in loops) | instr/elem | MUFU/elem |",
             "|---|---|---|---|---|---|---|---|---|"]
    source = None
    for k in kernels:
        if k.source != source:
            source = k.source
            lines.append(f"| **{source}** | | | | | | | | |")
        detail = ", ".join(f"{op} {n}" for op, n in sorted(k.mufu.items()))
        mufu = f"{k.mufu_total} ({detail})" if detail else "0"
        lines.append(f"| `{k.name}` | {k.registers} | {k.spill_stores}/{k.spill_loads} | {k.smem_bytes} | "
                     f"{k.sass_instructions} | {mufu} | {k.div64_sites} ({k.div64_in_loops}) | "
                     f"{_per_element(k.loop_instructions, k.elements_per_iteration)} | "
                     f"{_per_element(k.loop_mufu, k.elements_per_iteration)} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", nargs="*", help="CUDA sources (default: every csrc/**/*.cu)")
    parser.add_argument("--filter", help="regular expression on the kernel name (demangled, short form)")
    parser.add_argument("--jobs", type=int, default=2, help="sources compiled at once")
    parser.add_argument("--cuobjdump", help="path of cuobjdump (nvdisasm must be beside it or on PATH)")
    parser.add_argument("--json", help="also write the statistics as JSON to this file")
    args = parser.parse_args(argv)

    cuobjdump = find_tool("cuobjdump", args.cuobjdump)
    if cuobjdump is None or find_tool("nvdisasm", os.path.join(os.path.dirname(cuobjdump), "nvdisasm")) is None:
        sys.exit("kernel_stats: cuobjdump and nvdisasm not found (see this script's docstring)")
    sources = args.sources or sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cu"))
    with tempfile.TemporaryDirectory() as obj_dir, concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda s: collect(s, obj_dir, cuobjdump), sources))
    kernels = build_kernels(results)
    if args.filter:
        kernels = [k for k in kernels if re.search(args.filter, k.name)]
    print(markdown(kernels))
    if args.json:
        rows = [dict(asdict(k), mufu_total=k.mufu_total) for k in kernels]
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
