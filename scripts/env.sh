# Create or reuse .venv and install the package into it. Sourced by scripts/train.sh and scripts/test.sh.
# torch==2.13.0 is installed first: on the project's CPU machines that pin takes the local CPU wheel, and any
# other torch spec would download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
V=.venv/bin
pip_q() { "$V/python" -m pip install -q --disable-pip-version-check "$@"; }
"$V/python" -c "import torch" 2>/dev/null || pip_q torch==2.13.0
pip_q setuptools wheel -c scripts/constraints-cpu.txt
pip_q --no-build-isolation -c scripts/constraints-cpu.txt -e ".[triton${YOLOV10_EXTRAS:+,$YOLOV10_EXTRAS}]"
