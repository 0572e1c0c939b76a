"""Fused Triton and C++/CUDA kernels for YOLOv10, with drop-in modules and `accelerate(model)`."""
from .accelerate import OPS, accelerate
from .backend import available, kernels_disabled

__all__ = ["accelerate", "available", "kernels_disabled", "OPS", "FusedTaskAlignedAssigner"]
__version__ = "0.1.0"


def __getattr__(name):  # the assigner loads (and may JIT-build) the C++ extension: only on first use
    if name == "FusedTaskAlignedAssigner":
        from .assign import FusedTaskAlignedAssigner
        return FusedTaskAlignedAssigner
    raise AttributeError(name)
