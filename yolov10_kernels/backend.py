"""Which kernel backends can run here, and the one check every drop-in's per-call dispatch goes through."""
import torch

from .ops import assign
from .ops.utils import TRITON_IMPORT_ERROR, kernels_disabled, triton_interpreted, warn_once

BACKENDS = ("auto", "triton", "reference")

__all__ = ["BACKENDS", "TRITON_IMPORT_ERROR", "available", "check_backend", "kernels_disabled", "triton_interpreted", "triton_status",
           "use_triton", "warn_once"]


def triton_status(device_type=None):
    """(usable, reason) for Triton kernels on `device_type` ("cuda"/"cpu"; None = this machine's best)."""
    if kernels_disabled():
        return False, "YOLOV10_KERNELS=off"
    if TRITON_IMPORT_ERROR:
        return False, TRITON_IMPORT_ERROR
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        if triton_interpreted():
            return False, "TRITON_INTERPRET=1 runs Triton on CPU tensors only"
        return (True, "CUDA device") if torch.cuda.is_available() else (False, "no CUDA device")
    if triton_interpreted():
        return True, "CPU through TRITON_INTERPRET=1 (the interpreter: for testing, slow)"
    return False, "no CUDA device (TRITON_INTERPRET=1 runs Triton kernels on the CPU, slowly, for testing)"


def available():
    """{backend: (usable, reason)} for this machine: 'triton' kernels and the 'cpp'/'cuda' extension ops."""
    return {"triton": triton_status(), **assign.extension_status()}


def check_backend(backend):
    """A bad backend name is a ValueError; backend="triton" where Triton cannot run is a RuntimeError."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton" and not kernels_disabled():
        ok, why = triton_status(None if not triton_interpreted() else "cpu")
        if not ok:
            raise RuntimeError(f"backend='triton' was requested but Triton kernels cannot run here: {why}")


def use_triton(backend, device_type):
    """Per-call dispatch of a drop-in module: True if a call on `device_type` tensors should run the Triton
    kernels. 'auto' uses Triton on CUDA tensors and keeps the (fast, cuDNN/MKL) reference path on the CPU."""
    if backend == "reference" or kernels_disabled():
        return False
    ok, why = triton_status(device_type)
    if backend == "triton":
        if not ok:
            raise RuntimeError(f"backend='triton' cannot run on {device_type} tensors here: {why}")
        return True
    if device_type != "cuda":
        return False
    if not ok:
        warn_once(("triton", why), f"yolov10_kernels: Triton kernels unavailable ({why}); using the reference modules")
    return ok
