#!/usr/bin/env bash
# One-shot check on a GPU machine: build with the CUDA kernels, run the whole test suite (CUDA tests included),
# then the benchmarks. Results go to ${OUT:-benchmarks/out}. Usage: bash benchmarks/gpu_check.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
python setup.py build_ext --inplace > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
python -c "import resnest_cuda; assert resnest_cuda.cuda_kernels_available(), 'CUDA kernels not built'"

python -m pytest -q -x -p no:cacheprovider tests 2>&1 | tee "$out/tests.log" | tail -25

python benchmarks/bench_split_attention.py --out "$out/split_attention.json" 2>&1 | tee "$out/split_attention.txt"
for bench in bench_detection_ops bench_backbone bench_detector; do
  if [ -f "benchmarks/$bench.py" ]; then
    python "benchmarks/$bench.py" --out "$out/$bench.json" 2>&1 | tee "$out/$bench.txt" | tail -30
  fi
done
