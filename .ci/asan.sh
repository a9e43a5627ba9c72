#!/usr/bin/env bash
# Builds the emulated CUDA kernels with AddressSanitizer (build/asan) and runs the emulator's comparison suite and
# self-tests against that build: out-of-bounds global and shared-memory accesses of the CUDA kernels fail the run.
#
#   bash .ci/asan.sh [PYTEST ARGS ...]     # default: tests/test_emulated_cuda.py tests/test_emulator.py
set -euo pipefail
cd "$(dirname "$0")/.."

RESNEST_EMULATE_CUDA=asan MAX_JOBS=${MAX_JOBS:-2} python setup.py -q build_ext --build-lib build/asan \
  --build-temp build/asan-temp
library=$(ls build/asan/resnest_cuda/_C_emu*.so)
if [ $# -eq 0 ]; then set -- tests/test_emulated_cuda.py tests/test_emulator.py; fi
# libasan first; libstdc++ preloaded too so that its exception interceptors resolve (python does not link it).
# --capture=sys: a sanitizer report (written to fd 2) reaches the log even when it ends the process.
RESNEST_EMU_LIBRARY="$library" \
  LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \
  ASAN_OPTIONS=detect_leaks=0 \
  python -m pytest -q --capture=sys -p no:cacheprovider "$@"
