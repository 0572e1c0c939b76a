"""accelerate(model): swap a model's modules for fused drop-ins, in place (Liger-style patcher), and
swapped(model): which drop-ins a model holds. State-dict keys stay the same, so checkpoints load into
accelerated and plain models alike."""
import torch

from . import dispatch as measured_dispatch
from .backend import TRITON_IMPORT_ERROR, check_backend, kernels_disabled, warn_once
from .modules import cib, cls_head, psa, scdown
from .modules.cib import FusedCIB
from .modules.cls_head import FusedClsHead
from .modules.psa import FusedAttention
from .modules.scdown import FusedSCDown

# op name -> swap(model, backend) -> number of drop-ins of that op the model then holds
OPS = {"cib": cib.swap, "scdown": scdown.swap, "cls_head": cls_head.swap, "psa": psa.swap}
# op name -> the drop-in class counted by swapped() (PSA: its fused attention, one per block)
DROPINS = {"cib": FusedCIB, "scdown": FusedSCDown, "cls_head": FusedClsHead, "psa": FusedAttention}


def accelerate(model, ops=None, backend="auto", dispatch=None, **measure):
    """Swap the modules named in `ops` (None = all of "cib", "scdown", "cls_head", "psa") for fused drop-ins.
    backend: "auto" (Triton on CUDA tensors, reference on the CPU), "triton" (always Triton; on the CPU this
    needs TRITON_INTERPRET=1) or "reference". Returns the model; swapped(model) tells what is in it.
    Where triton cannot be imported, "auto" and "reference" leave the model unchanged with one warning (every
    op here is a Triton kernel) and "triton" is a RuntimeError.
    A model on CUDA (call accelerate() after .cuda()) is also put in channels_last memory format (backends "auto"
    and "triton"): the kernels load channels_last tiles with 16-byte vector copies and NCHW ones with scalar
    loads, and cuDNN's convolutions then produce channels_last activations for them. On the CPU, and with
    backend="reference", the memory format is left as it is.
    Eval mode runs the kernels with gradients too (the chains through their training op, BNs on running
    statistics); only a BN folded into its conv (model.fuse()) with gradients needed keeps the reference forward,
    with a one-time warning.
    dispatch: which path the drop-ins take under backend "auto" (yolov10_kernels.dispatch): "fused", "reference",
    or "measure" (the faster one as measured on this GPU); None leaves the policy as it is
    ($YOLOV10_KERNELS_DISPATCH, else "fused"). With "measure", `measure` holds the keyword arguments of
    yolov10_kernels.dispatch.measure (shape=(batch, channels, height, width) is required; dtype, train, amp,
    timer...): the drop-ins are timed now, on a copy of the model (its report: yolov10_kernels.dispatch.report()).
    A bad dispatch is a ValueError, as are measure arguments without dispatch="measure"."""
    names = tuple(OPS) if ops is None else ((ops,) if isinstance(ops, str) else tuple(ops))
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; choose from {list(OPS)}")
    check_backend(backend)
    if measure and dispatch != "measure":
        raise ValueError(f"measure arguments {sorted(measure)} need dispatch='measure', got dispatch={dispatch!r}")
    if dispatch is not None:
        measured_dispatch.set_policy(dispatch)
    if kernels_disabled():
        warn_once("disabled", "YOLOV10_KERNELS=off: accelerate() leaves the model unchanged")
        return model
    if TRITON_IMPORT_ERROR:
        warn_once("no-triton", f"yolov10_kernels: {TRITON_IMPORT_ERROR}; accelerate() leaves the model unchanged "
                               "(the reference modules run)")
        return model
    for name in names:
        OPS[name](model, backend)
    if backend != "reference" and _on_cuda(model):
        model.to(memory_format=torch.channels_last)
    if measure:
        measured_dispatch.measure(model, **measure)
    return model


def _on_cuda(model):
    return any(p.is_cuda for p in model.parameters())


def swapped(model):
    """{op name: number of its drop-in modules in `model`} for the ops that have any (walks the model)."""
    counts = {name: sum(isinstance(m, cls) for m in model.modules()) for name, cls in DROPINS.items()}
    return {name: n for name, n in counts.items() if n}
