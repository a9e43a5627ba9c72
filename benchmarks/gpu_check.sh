#!/usr/bin/env bash
# Checks on a GPU machine: build with the CUDA kernels, run the whole test suite (CUDA tests included), run the
# benchmarks. Results go to ${OUT:-benchmarks/out}.
#   bash benchmarks/gpu_check.sh [build|test|bench|profile|all]   (default: all; steps can run as separate commands)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/out}
mkdir -p "$out"
step=${1:-all}

if [ "$step" = build ] || [ "$step" = all ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  export MAX_JOBS=${MAX_JOBS:-16}
  python setup.py build_ext --inplace > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
  python -c "import resnest_cuda; assert resnest_cuda.cuda_kernels_available(), 'CUDA kernels not built'"
fi

if [ "$step" = test ] || [ "$step" = all ]; then
  python -m pytest -q -p no:cacheprovider tests 2>&1 | tee "$out/tests.log" | tail -25
fi

if [ "$step" = bench ] || [ "$step" = all ]; then
  for bench in bench_split_attention bench_detection_ops bench_backbone bench_detector; do
    python -m "benchmarks.$bench" --out "$out/$bench.json" 2>&1 | tee "$out/$bench.txt" | tail -40
  done
fi

if [ "$step" = profile ] || [ "$step" = all ]; then
  # Where a Faster R-CNN S-50 training step spends its time, and its host synchronisations (2 x 800x1216).
  for precision in bf16 fp32; do
    python -m benchmarks.profile_detector --precision "$precision" --out "$out/profile_$precision" 2>&1 \
      | tee "$out/profile_$precision.txt" | tail -90
  done
fi
