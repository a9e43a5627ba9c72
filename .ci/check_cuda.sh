#!/usr/bin/env bash
# Compile-only check of every CUDA source for sm_90 with nvcc. Runs on machines whose torch is a CPU build:
# that wheel lacks c10/cuda/impl/cuda_cmake_macros.h, so a one-line stand-in goes on an include path of its own,
# used only here. Nothing is linked or run.
#
#   bash .ci/check_cuda.sh [SOURCE.cu ...]   # default: every csrc/**/*.cu
# CHECK_CUDA_EXTRA_FLAGS adds nvcc flags (e.g. "-Xptxas -v"); with CHECK_CUDA_OBJ_DIR set, the object of
# csrc/a/b.cu is kept as $CHECK_CUDA_OBJ_DIR/csrc_a_b.o (benchmarks/kernel_stats.py reads both).
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-nvcc}
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "check_cuda: nvcc not found; skipping the CUDA compile check" >&2
  exit 0
fi

stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
mkdir -p "$stub/c10/cuda/impl"
echo '#pragma once' > "$stub/c10/cuda/impl/cuda_cmake_macros.h"

mapfile -t includes < <(python - <<'PY'
import sysconfig
from torch.utils.cpp_extension import include_paths
for p in include_paths():
    print("-I" + p)
print("-I" + sysconfig.get_paths()["include"])
PY
)

read -r -a extra <<<"${CHECK_CUDA_EXTRA_FLAGS:-}"
if (($#)); then sources=("$@"); else mapfile -d '' -t sources < <(find csrc -name '*.cu' -print0 | sort -z); fi

status=0
for src in "${sources[@]}"; do
  obj="$stub/out.o"
  if [ -n "${CHECK_CUDA_OBJ_DIR:-}" ]; then obj="$CHECK_CUDA_OBJ_DIR/$(echo "${src%.cu}" | tr / _).o"; fi
  echo "nvcc -c (sm_90) $src"
  if ! "$NVCC" -c "$src" -o "$obj" -std=c++20 -O3 --expt-relaxed-constexpr \
      -gencode arch=compute_90,code=sm_90 -DWITH_CUDA -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -D__CUDA_NO_HALF2_OPERATORS__ -Xcompiler -fPIC -I"$stub" "${includes[@]}" ${extra[@]+"${extra[@]}"}; then
    echo "check_cuda: FAILED to compile $src" >&2
    status=1
  fi
done
exit $status
