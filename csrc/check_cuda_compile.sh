#!/usr/bin/env bash
# Compile-only check of the CUDA sources (csrc/cuda/*.cu) on a machine without a GPU or a CUDA build of torch:
# nvcc -c against the CPU torch wheel's headers, plus the cuBLAS/cuSPARSE/cuSOLVER headers torch's CUDA
# headers include (taken from the NVIDIA wheels, include/ only) and the stub c10/cuda/impl/cuda_cmake_macros.h
# the CPU wheel lacks (see shared/research/environment.md). Nothing is linked or run.
# The headers are cached outside the repo: $YOLOV10_KERNELS_CUDA_HEADERS, else ~/.cache/yolov10_kernels/cuda-headers.
# Usage: csrc/check_cuda_compile.sh [python]   (exit 0 = every .cu compiled; 77 = cannot check here)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${1:-${PYTHON:-.venv/bin/python}}
command -v nvcc >/dev/null || { echo "check_cuda_compile: nvcc not found" >&2; exit 77; }
CACHE=${YOLOV10_KERNELS_CUDA_HEADERS:-${XDG_CACHE_HOME:-$HOME/.cache}/yolov10_kernels/cuda-headers}
# A CUDA build of torch next to a CUDA toolkit (the GPU machine, which has no network) has every header:
# compile against those and download nothing.
CUDA_INC=$(dirname "$(command -v nvcc)")/../include
if "$PY" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null && [ -f "$CUDA_INC/cublas_v2.h" ]; then
  CACHE=$(mktemp -d)
  mkdir -p "$CACHE/include" "$CACHE/stub"
  touch "$CACHE/.complete"
fi
mkdir -p "$CACHE"
if [ ! -f "$CACHE/.complete" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$tmp" \
      "nvidia-cublas==13.0.*" "nvidia-cusparse==12.6.*" "nvidia-cusolver==12.0.*" \
    || { echo "check_cuda_compile: could not download the NVIDIA header wheels" >&2; exit 77; }
  for w in "$tmp"/*.whl; do
    "$PY" - "$w" "$CACHE/include" <<'PYEOF'
import sys, zipfile, os
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        parts = n.split("/")
        if "include" in parts and not n.endswith("/"):
            rel = "/".join(parts[parts.index("include") + 1:])
            os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
            with open(os.path.join(dest, rel), "wb") as f:
                f.write(z.read(n))
PYEOF
  done
  mkdir -p "$CACHE/stub/c10/cuda/impl"
  echo "#define C10_CUDA_BUILD_SHARED_LIBS" > "$CACHE/stub/c10/cuda/impl/cuda_cmake_macros.h"
  touch "$CACHE/.complete"
fi
read -r TORCH_INC PY_INC < <("$PY" -c "import sysconfig, torch.utils.cpp_extension as c; print(':'.join(c.include_paths()), sysconfig.get_paths()['include'])")
INC=(-I"$CACHE/stub" -I"$CACHE/include" -I"$PY_INC")
IFS=: read -ra TI <<< "$TORCH_INC"
for d in "${TI[@]}"; do INC+=(-I"$d"); done
out=$(mktemp -d)
status=0
for src in csrc/cuda/*.cu; do
  if nvcc -c "$src" -o "$out/$(basename "$src").o" -std=c++20 -O3 --use_fast_math -arch=sm_90 \
       -D_GLIBCXX_USE_CXX11_ABI=1 -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H \
       -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
       -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr -Xcompiler -fPIC "${INC[@]}"; then
    echo "check_cuda_compile: OK $src"
  else
    echo "check_cuda_compile: FAILED $src" >&2
    status=1
  fi
done
rm -rf "$out"
exit $status
