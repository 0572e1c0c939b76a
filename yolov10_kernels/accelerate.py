"""accelerate(model): swap a yolov10.YOLOv10's modules for fused drop-ins, in place (Liger-style patcher).
State-dict keys stay the same, so checkpoints load into accelerated and plain models alike."""
import importlib

from .backend import check_backend, kernels_disabled, warn_once

# op name -> module holding `swap(model, backend) -> number of modules swapped`
OPS = {
    "cib": "yolov10_kernels.modules.cib",
    "scdown": "yolov10_kernels.modules.scdown",
    "cls_head": "yolov10_kernels.modules.cls_head",
    "psa": "yolov10_kernels.modules.psa",
}


def accelerate(model, ops=None, backend="auto"):
    """Swap the modules named in `ops` (None = all of "cib", "scdown", "cls_head", "psa") for fused drop-ins.
    backend: "auto" (Triton on CUDA tensors, reference on the CPU), "triton" (always Triton; on the CPU this
    needs TRITON_INTERPRET=1) or "reference". Returns the model."""
    names = tuple(OPS) if ops is None else ((ops,) if isinstance(ops, str) else tuple(ops))
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; choose from {list(OPS)}")
    check_backend(backend)
    if kernels_disabled():
        warn_once("disabled", "YOLOV10_KERNELS=off: accelerate() leaves the model unchanged")
        return model
    swapped = {}
    for name in names:
        try:
            mod = importlib.import_module(OPS[name])
        except ImportError as e:
            if backend == "triton":
                raise
            warn_once(("missing", name), f"yolov10_kernels: op {name!r} is not available ({e}); keeping the reference modules")
            continue
        swapped[name] = mod.swap(model, backend)
    model.accelerated = swapped
    return model
