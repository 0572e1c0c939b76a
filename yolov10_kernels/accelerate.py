"""accelerate(model): swap a model's modules for fused drop-ins, in place (Liger-style patcher), and
swapped(model): which drop-ins a model holds. State-dict keys stay the same, so checkpoints load into
accelerated and plain models alike."""
import dataclasses
from typing import Callable

import torch

from . import dispatch as measured_dispatch
from .backend import TRITON_IMPORT_ERROR, check_backend, kernels_disabled, warn_once
from .modules import cib, cls_head, psa, scdown
from .modules.cib import FusedCIB
from .modules.cls_head import FusedClsHead
from .modules.psa import FusedAttention
from .modules.scdown import FusedSCDown


@dataclasses.dataclass(frozen=True)
class DropInKind:
    """One op of accelerate(): how it is swapped in and which drop-in class swapped() counts."""
    swap: Callable  # swap(model, backend) -> number of drop-ins of that op the model then holds
    module: type  # the drop-in class counted by swapped() (PSA: its fused attention, one per block)


# op name -> its DropInKind; accelerate() swaps and swapped() counts from this one table
OPS = {"cib": DropInKind(cib.swap, FusedCIB), "scdown": DropInKind(scdown.swap, FusedSCDown),
       "cls_head": DropInKind(cls_head.swap, FusedClsHead), "psa": DropInKind(psa.swap, FusedAttention)}


def accelerate(model, ops=None, backend="auto", dispatch=None, **measure):
    """Swap the modules of `model` named in `ops` for the fused drop-ins of yolov10_kernels.modules, in place.

    State-dict keys stay the same; drop-ins of these ops already in the model get the new backend; a module whose
    layout the kernels do not implement is not swapped and keeps its reference forward (one warning). Eval mode
    runs the kernels with gradients too (the chains through their training op, BNs on running statistics); only a
    BN folded into its conv (model.fuse()) with gradients needed keeps the reference forward, with a one-time
    warning.

    Arguments:
        model: torch.nn.Module, a yolov10 model (or any module holding its CIB, SCDown, PSA / Attention modules or
            v10Detect heads), parameters on the CPU or CUDA, its dtype left as it is; modified in place. Call
            accelerate() after .cuda(): a model with a CUDA parameter is also put in channels_last memory format
            (backends "auto" and "triton": the kernels load channels_last tiles with 16-byte vector copies and NCHW
            ones with scalar loads, and cuDNN's convolutions then produce channels_last activations for them). On
            the CPU, and with backend="reference", the memory format is left as it is.
        ops: None, str or iterable of str. The ops to swap, names of OPS: "cib" (CIB), "scdown" (SCDown),
            "cls_head" (the light cls branches cv3 / one2one_cv3 of v10Detect heads and subclasses), "psa" (PSA
            blocks, and every other Attention module). Default None: all four.
        backend: str. "auto" (default: Triton on CUDA tensors, the reference path on the CPU), "triton" (always
            Triton; on the CPU this needs TRITON_INTERPRET=1) or "reference".
        dispatch: None or str, which path the drop-ins take under backend "auto" (yolov10_kernels.dispatch):
            "fused", "reference", or "measure" (the faster one as measured on this GPU). It sets the policy of
            the whole process, even where the model is left unchanged. Default None: the policy stays as it is
            ($YOLOV10_KERNELS_DISPATCH, else "fused").
        **measure: only with dispatch="measure": the keyword arguments of yolov10_kernels.dispatch.measure,
            shape=(batch, channels, height, width) required, then dtype (default torch.float16), train, amp,
            channels_last, timer, margin, cache. The drop-ins are then timed now, after the swap, on a deep copy
            of the model (its report: yolov10_kernels.dispatch.report()). Without them, dispatch="measure" only
            sets the policy (an unmeasured drop-in runs its fused path).

    Returns:
        model: the same module, its modules swapped; swapped(model) tells what is in it. Left unchanged, with one
            warning, under YOLOV10_KERNELS=off, and where triton cannot be imported with backend "auto" or
            "reference" (every op here is a Triton kernel).

    Raises:
        ValueError: an unknown op name, a bad backend or dispatch, measure arguments without
            dispatch="measure", or a bad shape for dispatch.measure.
        TypeError: measure arguments without shape, or ones dispatch.measure does not take.
        RuntimeError: backend="triton" where Triton kernels cannot run: triton cannot be imported, or there is no
            CUDA device and TRITON_INTERPRET=1 is not set (not raised under YOLOV10_KERNELS=off).
    """
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
        OPS[name].swap(model, backend)
    if backend != "reference" and _on_cuda(model):
        model.to(memory_format=torch.channels_last)
    if measure:
        measured_dispatch.measure(model, **measure)
    return model


def _on_cuda(model):
    return any(p.is_cuda for p in model.parameters())


def swapped(model):
    """Which drop-ins `model` holds, counted by walking all of its modules.

    Arguments:
        model: torch.nn.Module, any model (accelerated or not), on any device and dtype; not modified.

    Returns:
        counts: dict {op name: number of its drop-in modules (OPS[name].module) in `model`}, only for the ops
            that have any ("psa": fused attention modules, one per PSA block); {} for a plain model.

    Raises:
        None of its own.
    """
    counts = {name: sum(isinstance(m, kind.module) for m in model.modules()) for name, kind in OPS.items()}
    return {name: n for name, n in counts.items() if n}
