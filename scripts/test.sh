#!/usr/bin/env bash
# Set up (or reuse) .venv with the test dependencies and run the whole test suite.
YOLOV10_EXTRAS=test,export source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# ultralytics is the parity oracle only; --no-deps keeps it from replacing torch or opencv
"$V/python" -c "import ultralytics" 2>/dev/null || pip_q --no-deps ultralytics==8.3.253 torchvision==0.28.0
# ultralytics 8.4.190, the second oracle of the ultralytics patch (tests/test_ultralytics84.py runs it in a
# subprocess with this folder first on PYTHONPATH)
U84="$(dirname "$V")/ultralytics84"
[ -f "$U84/ultralytics/__init__.py" ] || pip_q --no-deps --target "$U84" ultralytics==8.4.190
# 8.4.140+ pickles the DDP worker state with cloudpickle (tests/test_ultralytics_patch.py's DDP worker test)
[ -f "$U84/cloudpickle/__init__.py" ] || pip_q --no-deps --target "$U84" "cloudpickle>=3.1.1"
if [ $# -eq 0 ]; then set -- tests; fi
exec "$V/python" -m pytest "$@"
