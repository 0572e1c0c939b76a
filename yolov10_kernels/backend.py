"""Which kernel backends can run here, and the one switch that turns all custom kernels off."""
import functools
import os
import warnings

import torch

BACKENDS = ("auto", "triton", "reference")


def kernels_disabled():
    """YOLOV10_KERNELS=off (or 0/false/none) turns every custom kernel off: the reference path runs."""
    return os.environ.get("YOLOV10_KERNELS", "").strip().lower() in ("off", "0", "false", "none", "reference")


def triton_interpreted():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton_importable():
    try:
        import triton  # noqa: F401
        return True, ""
    except Exception as e:  # ImportError, or a broken install
        return False, f"triton cannot be imported ({type(e).__name__}: {e})"


def triton_status(device_type=None):
    """(usable, reason) for Triton kernels on `device_type` ("cuda"/"cpu"; None = this machine's best)."""
    if kernels_disabled():
        return False, "YOLOV10_KERNELS=off"
    ok, why = _triton_importable()
    if not ok:
        return False, why
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
    from .ops import assign_ext
    out = {"triton": triton_status()}
    out.update(assign_ext.extension_status())
    return out


_warned = set()


def warn_once(key, message):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton" and not kernels_disabled():
        ok, why = triton_status(None if not triton_interpreted() else "cpu")
        if not ok:
            raise RuntimeError(f"backend='triton' was requested but Triton kernels cannot run here: {why}")


def use_triton(backend, x):
    """Per-call dispatch of a drop-in module: True if this call should run the Triton kernel for tensor x.
    'auto' uses Triton on CUDA tensors and keeps the (fast, cuDNN/MKL) reference path on the CPU."""
    if backend == "reference" or kernels_disabled():
        return False
    ok, why = triton_status(x.device.type)
    if backend == "triton":
        if not ok:
            raise RuntimeError(f"backend='triton' cannot run on {x.device.type} tensors here: {why}")
        return True
    if x.device.type != "cuda":
        return False
    if not ok:
        warn_once(("triton", why), f"yolov10_kernels: Triton kernels unavailable ({why}); using the reference modules")
    return ok
