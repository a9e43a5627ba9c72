#!/usr/bin/env bash
# GPU first light in one command: environment, build, CUDA tests, compute-sanitizer (memcheck, racecheck) over
# benchmarks/sanitize_driver.py, the benchmarks and the detector profile, each step under its own timeout and all
# of them inside one overall budget (GPU_CHECK_BUDGET_S, default 465 s: the whole call fits in 8 minutes on an
# H100/H200). A step that fails or times out costs only its own time; steps that need the CUDA build are skipped
# when the build failed.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run   # the same steps on the CPU at tiny sizes (existing build, no nvcc,
#                                            # no sanitizer; the test step only collects): keeps this script working
#
# Results in ${OUT:-benchmarks/out}: summary.txt (the table printed last), summary.json, logs.tar.gz (every step's
# log and JSON; profile traces are dropped if the bundle would pass 15 MB). Three files, so they fit the at most 8
# files that come back from a GPU machine.
#
# The GPU machine has no pycocotools: carry its Python 3.12 wheel in .whl/ (ignored by git); it is installed to
# /tmp/site and put on PYTHONPATH. Fetch it with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl pycocotools
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
case "${1:-}" in
  --dry-run) dry=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
out=${OUT:-benchmarks/out}
budget=${GPU_CHECK_BUDGET_S:-465}
mkdir -p "$out"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
export PYTHONUNBUFFERED=1
# A dry run shares a small CPU: one thread per process (two threads on busy cores made a tiny training step 15x
# slower there).
((dry)) && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
t0=$(date +%s)
rows=()       # name|status|seconds|note
build_ok=1

# run_step NAME BUDGET_S NOTE_PATTERN COMMAND: runs COMMAND (a bash string) with its output in $logs/NAME.log,
# under a timeout of min(BUDGET_S, what is left of the overall budget). NOTE_PATTERN (grep -E) picks the log line
# shown in the summary.
run_step() {
  local name=$1 limit=$2 pattern=$3 cmd=$4
  local left=$((budget - ($(date +%s) - t0)))
  ((limit > left)) && limit=$left
  if ((limit < 5)); then
    rows+=("$name|skipped|0|no time left in the ${budget} s budget")
    echo "[$name] skipped: no time left"
    return
  fi
  echo "[$name] running (timeout ${limit} s): $cmd"
  local start=$(date +%s)
  timeout -k 5 "$limit" bash -c "$cmd" >"$logs/$name.log" 2>&1
  local rc=$?
  local secs=$(($(date +%s) - start)) status=ok
  if ((rc == 124 || rc == 137)); then status="TIMEOUT"; elif ((rc != 0)); then status="FAIL rc=$rc"; fi
  local note
  note=$(grep -E "$pattern" "$logs/$name.log" | tail -1 | tr '|' '/' | cut -c1-110)
  [ -z "$note" ] && note=$(grep -v '^\s*$' "$logs/$name.log" | tail -1 | tr '|' '/' | cut -c1-110)
  rows+=("$name|$status|$secs|$note")
  echo "[$name] $status in ${secs} s: $note"
  [ "$status" != ok ] && tail -15 "$logs/$name.log" | sed 's/^/    /'
  return 0
}

# build_failed: marks the build as failed when its step failed or timed out.
build_failed() {
  case "${rows[-1]}" in build\|FAIL* | build\|TIMEOUT*) build_ok=0 ;; esac
}

# needs_build NAME: records NAME as skipped (and returns 1) when the CUDA build failed.
needs_build() {
  if ((build_ok)); then return 0; fi
  rows+=("$1|skipped|0|the build failed")
  echo "[$1] skipped: the build failed"
  return 1
}

if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >"$logs/wheels.log" 2>&1 \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

env_cmd='$PY -c "import sys, torch; print(\"python\", sys.version.split()[0], \"torch\", torch.__version__,
\"cuda\", torch.version.cuda, \"gpu\", torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: none")
(nvcc --version | tail -1 || echo "nvcc: none"); (compute-sanitizer --version | head -2 || true)
$PY -c "import pycocotools; print(\"pycocotools\", pycocotools.__file__)" || echo "pycocotools: not importable"'
export PY
run_step env 20 '^python ' "$env_cmd"

if ((dry)); then
  run_step build 60 'kernels' '$PY -c "import resnest_cuda; print(\"existing build, CUDA kernels:\",
    resnest_cuda.cuda_kernels_available())"'
  build_failed
  # Collect (not run) the selection in the files written for the first GPU run: checks the expression and imports.
  tests_cmd='$PY -m pytest -q -p no:cacheprovider --collect-only -k "cuda or device_mismatch" \
    tests/test_device_paths.py tests/test_split_attention_fuzz.py tests/detection/test_gpu_precision.py'
else
  run_step build 150 'error|Error|copying|kernels' 'rm -rf build; TORCH_CUDA_ARCH_LIST=9.0+PTX MAX_JOBS=16 \
    $PY setup.py build_ext --inplace && $PY -c "import resnest_cuda; assert resnest_cuda.cuda_kernels_available(), \
    \"CUDA kernels not built\"; print(\"CUDA kernels: built\")"'
  build_failed
  # Every test that touches CUDA: the device-parametrised [cuda] cases and the CUDA-only tests.
  tests_cmd="\$PY -m pytest -q -p no:cacheprovider -rfE --durations=10 -k 'cuda or device_mismatch' \
    --junitxml=$logs/tests.xml tests"
fi
needs_build tests && run_step tests 120 'passed|failed|error|tests? collected' "$tests_cmd"

if ((dry)); then
  needs_build memcheck && run_step memcheck 60 'sanitize_driver' '$PY -m benchmarks.sanitize_driver --device cpu --tiny'
  needs_build racecheck && run_step racecheck 30 'sanitize_driver' \
    '$PY -m benchmarks.sanitize_driver --device cpu --tiny --only nms'
else
  # Instrument only our kernels (the framework's own kernels run uninstrumented) when this sanitizer accepts the
  # filter (tried on a program without CUDA); no caching allocator under memcheck, so an access past a tensor's
  # end is past its allocation.
  filter="--kernel-name kns=resnest_cuda"
  timeout 30 compute-sanitizer $filter true >/dev/null 2>&1 || filter=""
  export filter
  needs_build memcheck && run_step memcheck 50 'ERROR SUMMARY|sanitize_driver' 'echo "kernel filter: ${filter:-none}"; \
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 $filter $PY -m benchmarks.sanitize_driver'
  needs_build racecheck && run_step racecheck 35 'ERROR SUMMARY|RACECHECK SUMMARY|sanitize_driver' \
    'compute-sanitizer --tool racecheck --error-exitcode 1 $filter $PY -m benchmarks.sanitize_driver \
    --only split_attention --only nms --only batch_norm'
fi

if ((dry)); then
  dev="--device cpu"
  split_args="--shapes tiny --dtypes float32,bfloat16 --iters 1 --no-compile"
  ops_args="--iters 1 --channels 8 --roi-sets 40 --nms-sizes 300"
  backbone_args="--models resnest14 --impls fused --layouts channels_last --batch 2 --size 32 --iters 1 \
    --warmup 0 --dtype fp32"
  detector_args="--config tiny_test --batch 2 --size 64x64 --precisions fp32 --infer-batches 1 --iters 1 \
    --warmup 0 --impls fused --layouts channels_last"
  profile_args="--config tiny_test --batch 2 --size 64x64 --iters 1 --warmup 0 --rows 5"
  syncs_args="--models faster --size 64x96 --engine"
  graph_args="--backbone resnest14 --size 64x96"
else
  dev="--device cuda"
  # The goals: the three largest detection shapes, both layouts, bf16 and fp32, vs a copy, eager and compile.
  split_args="--shapes detection --limit 3 --iters 20"
  ops_args="--iters 10"
  backbone_args="--models resnest50 --impls fused,reference,fused+fold,timm --layouts channels_last,nchw \
    --iters 10 --warmup 3"
  detector_args="--config faster_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco \
    --config mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco --impls fused --layouts channels_last \
    --precisions fp32,bf16 --infer-batches 1 --iters 5 --torchvision faster,mask,faster_v2"
  profile_args="--precision bf16 --iters 3"
  # torch.cuda.set_sync_debug_mode over steady-state steps: what the CPU counter cannot see (copies, syncs in ATen)
  syncs_args="--models faster,mask --backbone resnest50 --size 800x1216 --engine"
  # The stretch goal: a fixed-size Faster R-CNN S-50 training step captured as one CUDA graph and replayed.
  graph_args="--size 800x1216 --iters 10"
fi
needs_build bench_split_attention && run_step bench_split_attention 70 'wrote|copy bandwidth' \
  "\$PY -m benchmarks.bench_split_attention $dev $split_args --out $logs/bench_split_attention.json"
needs_build bench_detection_ops && run_step bench_detection_ops 25 'wrote' \
  "\$PY -m benchmarks.bench_detection_ops $dev $ops_args --out $logs/bench_detection_ops.json"
needs_build bench_backbone && run_step bench_backbone 50 'wrote|error' \
  "\$PY -m benchmarks.bench_backbone $dev $backbone_args --out $logs/bench_backbone.json"
needs_build bench_detector && run_step bench_detector 70 'wrote' \
  "\$PY -m benchmarks.bench_detector $dev $detector_args --out $logs/bench_detector.json"
needs_build profile && run_step profile 35 'host synchronisations|wrote' \
  "\$PY -m benchmarks.profile_detector $dev $profile_args --out $logs/profile"
needs_build syncs && run_step syncs 60 'host synchronisations' \
  "\$PY -m benchmarks.count_syncs $dev $syncs_args --out $logs/syncs.json"
needs_build cuda_graph && run_step cuda_graph 40 'CUDA graph|capture failed|nothing captured' \
  "\$PY -m benchmarks.cuda_graph_step $dev $graph_args --out $logs/cuda_graph.json"

# ------------------------------------------------------------------------------------------------------------
# Bundle and summarise.
total=$(($(date +%s) - t0))
mode=$([ "$dry" = 1 ] && echo dry-run || echo gpu)
{
  printf '%-22s %-12s %6s  %s\n' step status seconds note
  for row in "${rows[@]}"; do
    IFS='|' read -r name status secs note <<<"$row"
    printf '%-22s %-12s %6s  %s\n' "$name" "$status" "$secs" "$note"
  done
  printf 'total %d s (%s, budget %d s)\n' "$total" "$mode" "$budget"
} >"$out/summary.txt"
printf '%s\n' "${rows[@]}" | MODE=$mode TOTAL=$total BUDGET=$budget $PY -c '
import json, os, sys
steps = [dict(zip(("step", "status", "seconds", "note"), line.rstrip("\n").split("|", 3))) for line in sys.stdin]
for s in steps:
    s["seconds"] = int(s["seconds"])
print(json.dumps({"mode": os.environ["MODE"], "total_s": int(os.environ["TOTAL"]),
                  "budget_s": int(os.environ["BUDGET"]), "steps": steps}, indent=2))' >"$out/summary.json"
cp "$out/summary.txt" "$out/summary.json" "$logs/"
tar -czf "$out/logs.tar.gz" -C "$logs" .
if (($(stat -c %s "$out/logs.tar.gz") > 15 * 1024 * 1024)); then
  tar -czf "$out/logs.tar.gz" -C "$logs" --exclude='trace.json' .
fi
echo
cat "$out/summary.txt"
grep -q -E '\|(FAIL|TIMEOUT)' <(printf '%s\n' "${rows[@]}") && exit 1
exit 0
