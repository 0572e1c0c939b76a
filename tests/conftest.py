import os
import sys
import tempfile

import torch

# Triton kernels run on the CPU through the interpreter; it must be set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# ultralytics (the parity oracle) must neither phone home nor write to the home directory.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo_cfg_"))
torch.set_num_threads(min(2, os.cpu_count() or 1))

import pytest  # noqa: E402

from yolov10_kernels.ops import utils  # noqa: E402


@pytest.fixture(autouse=True)
def poison_kernel_buffers(monkeypatch):
    """Every buffer a kernel launcher allocates starts as NaN, so an unwritten element fails the comparison."""
    monkeypatch.setattr(utils, "POISON", True)
