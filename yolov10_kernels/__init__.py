"""Fused Triton and C++/CUDA kernels for YOLOv10, with drop-in modules, `accelerate(model)`, `swapped(model)` and
`warmup(model, imgsz, batch, dtype)` (compile every kernel variant the model launches, in parallel, up front)."""
from . import dispatch
from .accelerate import OPS, accelerate, swapped
from .backend import available, kernels_disabled
from .warmup import warmup

__all__ = ["accelerate", "available", "dispatch", "kernels_disabled", "OPS", "swapped", "warmup", "FusedTaskAlignedAssigner",
           "patch_ultralytics", "unpatch_ultralytics"]
__version__ = "0.1.0"


def __getattr__(name):  # the assigner loads (and may JIT-build) the C++ extension: only on first use
    if name == "FusedTaskAlignedAssigner":
        from .modules.assigner import FusedTaskAlignedAssigner
        return FusedTaskAlignedAssigner
    if name in ("patch_ultralytics", "unpatch_ultralytics"):  # ultralytics is imported only when they are called
        from .integrations import ultralytics
        return getattr(ultralytics, name)
    raise AttributeError(name)
