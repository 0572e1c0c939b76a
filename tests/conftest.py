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

from yolov10_kernels import gpus  # noqa: E402
from yolov10_kernels.ops import utils  # noqa: E402
from yolov10_kernels.testing import bounds  # noqa: E402

# Every interpreted launch's masked-in loads and stores must stay inside its tensor arguments' storages.
bounds.install()


@pytest.fixture(autouse=True)
def poison_kernel_buffers(monkeypatch):
    """Every buffer a kernel launcher allocates starts as NaN, so an unwritten element fails the comparison."""
    monkeypatch.setattr(utils, "POISON", True)


@pytest.fixture
def gpu_grid(request):
    """The GPU-grid mode (gpus.emulate) for the whole test, parametrized indirectly: a program count, a GPU's name
    (its profile's count) or None (off: the interpreter's one program and CPU paths). Yields the profile in force."""
    p = getattr(request, "param", None)
    if p is None:
        yield gpus.device_profile(torch.device("cpu"))
        return
    with gpus.emulate(**({"programs": p} if isinstance(p, int) else {"gpu": p})) as profile:
        yield profile


@pytest.fixture(autouse=True)
def kernel_accesses_in_bounds(request):
    """A test fails on any out-of-bounds access of an interpreted kernel (bounds.OutOfBounds, raised at the access),
    also where something between the launch and the test swallowed the error."""
    bounds.take()
    failed = request.session.testsfailed
    yield
    found = bounds.take()
    if request.session.testsfailed == failed:  # a test that failed on the error itself is not reported twice
        assert not found, "out-of-bounds kernel accesses:\n" + "\n".join(found[:5])


@pytest.fixture
def exact_fp32():
    """TF32 off for cuDNN convs and cuBLAS matmuls: fp32 parity tests whose references are exact fp32 (the kernels'
    fp32 dots follow these switches, ops/utils.tf32_allowed, and cuDNN's is on by default). No effect off the GPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

