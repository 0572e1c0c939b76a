#!/usr/bin/env bash
# One device call on a GPU machine (torch 2.11 + triton 3.6 preinstalled, nothing downloadable): install the
# package (no deps; builds the C++/CUDA extension), run the GPU correctness tests, then the benchmark suite.
# Everything lands under $OUT (and in bench/results/ of the copy on the device machine).
#
#   bash bench/gpu_session.sh                  install + GPU tests + python -m bench (budget: what is left)
#   SKIP_TESTS=1 bash bench/gpu_session.sh     install + the full bench (its 440 s budget fits after install)
#   QUICK=1 bash bench/gpu_session.sh          install + GPU tests + python -m bench --quick
#
# env: OUT (the device tool sets it; default ./gpu_out), PY (default python3), LIMIT_S (wall limit of the whole
#      script, default 570: a device command may run 600 s), TEST_TIMEOUT (default 150), BENCH_ARGS (extra args
#      for python -m bench), SKIP_TESTS=1, SKIP_INSTALL=1, QUICK=1.
# What comes back (at most 8 files in $OUT): env.txt, install.log, tests.log, bench.log, results json + md.
# The bench prints its short ratio table last and this script prints it again at the very end, so it is in
# the tail of the device reply.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
PY=${PY:-python3}
LIMIT_S=${LIMIT_S:-570}
mkdir -p "$OUT"
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
say() { echo "[gpu_session +$(elapsed)s] $*"; }

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import torch, triton, sys; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version()); print('triton', triton.__version__); print(torch.cuda.get_device_name())" 2>&1
  command -v nvcc >/dev/null && nvcc --version | tail -2
} > "$OUT/env.txt"
cat "$OUT/env.txt"

if [ "${SKIP_INSTALL:-0}" != "1" ]; then
  say "pip install --no-deps --no-build-isolation -e . (builds the C++/CUDA extension)"
  timeout 240 "$PY" -m pip install --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1
  rc=$?
  grep -E "yolov10-kernels\]|Successfully|error" "$OUT/install.log" | tail -5
  [ $rc -ne 0 ] && say "pip install rc $rc: running from the source tree (PYTHONPATH); the extension JIT-builds on first use"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import yolov10_kernels as k; print('available:', k.available())" 2>&1 | tee -a "$OUT/env.txt"

if [ "${SKIP_TESTS:-0}" != "1" ]; then
  say "GPU correctness tests: pytest tests -k 'cuda or gpu' (timeout ${TEST_TIMEOUT:-150}s)"
  timeout "${TEST_TIMEOUT:-150}" "$PY" -m pytest -q -rfE -p no:cacheprovider --benchmark-disable tests \
      -k "cuda or gpu" > "$OUT/tests.log" 2>&1
  say "tests rc $? -- $(tail -1 "$OUT/tests.log")"
fi

budget=$(( LIMIT_S - $(elapsed) - 45 ))
if [ -n "${QUICK:-}" ] && [ "$budget" -gt 160 ]; then budget=160; fi
if [ -z "${QUICK:-}" ] && [ "$budget" -gt 440 ]; then budget=440; fi
if [ "$budget" -lt 60 ]; then
  say "only ${budget}s left: running the bench with --quick anyway"
  budget=60
fi
say "python -m bench --device cuda ${QUICK:+--quick} --budget $budget ${BENCH_ARGS:-}"
stamp=$(mktemp)
# shellcheck disable=SC2086
timeout -s INT $(( budget + 40 )) "$PY" -m bench --device cuda ${QUICK:+--quick} --budget "$budget" \
    ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
rc=$?
latest_json=$(find bench/results -name '*.json' -newer "$stamp" 2>/dev/null | sort | tail -1)
[ -n "$latest_json" ] && cp "$latest_json" "${latest_json%.json}.md" "$OUT/" 2>/dev/null
say "bench rc $rc; results ${latest_json:-none} (copied to \$OUT)"
grep -E "^\[bench\]|error|Error" "$OUT/bench.log" | grep -v "^W[0-9]" | tail -15
echo
# the short ratio table and the targets, last
if [ -n "$latest_json" ]; then
  "$PY" -c "import sys; from bench import compare, common; r = common.load_results(sys.argv[1]); print(compare.header(r)); print(compare.short_tables(r))" "$latest_json"
fi
exit $rc
