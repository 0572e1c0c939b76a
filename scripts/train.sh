#!/usr/bin/env bash
# The main job: set up (or reuse) .venv, generate the embedded synthetic dataset, train yolov10n on it with the
# custom ops on (--kernels auto), validate, and print mAP50-95. Extra arguments go to `yolov10 train`.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec "$V/yolov10" train --model yolov10n --kernels auto --out runs/train "$@"
