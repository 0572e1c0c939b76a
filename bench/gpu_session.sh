#!/usr/bin/env bash
# The whole GPU check in one device call (at most 9 minutes; see bench/gpu_session.py for the phases):
#
#   bash bench/gpu_session.sh                 env, build, check, pytest, sweep, bench, ncu -> $OUT
#   bash bench/gpu_session.sh --phase bench   one phase again (at most 3 minutes), for the minutes left
#   bash bench/gpu_session.sh --dry-run       every phase on the CPU at tiny sizes (the test suite runs it)
#
# env: OUT (the device tool sets it; default ./gpu_out), PY (default .venv/bin/python where it exists, else
# python3). Results: at most 8 files in $OUT (env.json, build.json, correctness.json, pytest.xml, sweep.json,
# bench.json, ncu.json, session.log), each rewritten as its phase goes, so a timeout keeps what was measured.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# the GPU machine has no ultralytics: parity tests skip there instead of failing (tests/oracle.py)
export YOLOV10_NO_ORACLE=1
for a in "$@"; do
  if [ "$a" = "--dry-run" ]; then export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""; fi
done
exec "$PY" -m bench.gpu_session --out "$OUT" "$@"
