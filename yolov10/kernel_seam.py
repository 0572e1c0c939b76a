"""The seam between the reference package and the fused kernels: the only module of ``yolov10`` that names
``yolov10_kernels``. That package is imported lazily, on first use, so the reference runs without it.

``kernels`` (the trainer's and predictor's --kernels):
  reference  pure PyTorch everywhere;
  auto       the fused drop-in modules (backend 'auto') and the fused task-aligned assigner; when the kernels
             package cannot be imported, one warning and the reference everywhere;
  triton     the fused modules forced to Triton and the fused assigner; a missing kernels package is an error.
"""
import functools
import sys
import warnings

from .utils import is_main

__all__ = ["CHOICES", "DISPATCH_CHOICES", "accelerate", "fused_modules", "assigner_factory", "measure_dispatch"]

CHOICES = ("auto", "reference", "triton")
DISPATCH_CHOICES = ("fused", "reference", "measure")  # yolov10_kernels.dispatch.POLICIES
_INSTALL = "install it from the repository root with `pip install --no-build-isolation -e .`"
_warned = False  # under 'auto' a missing package is reported once per process, not once per use


def _import(name, kernels, rank=-1):
    """``yolov10_kernels.<name>``, or None when ``kernels`` is 'reference' or, under 'auto', when the package
    cannot be imported. Under 'triton' an import failure is a RuntimeError saying what is missing."""
    global _warned
    if kernels not in CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(CHOICES)}, got {kernels!r}")
    if kernels == "reference":
        return None
    try:
        import yolov10_kernels
        return getattr(yolov10_kernels, name)
    except ImportError as e:
        what = f"yolov10_kernels.{name} cannot be imported ({type(e).__name__}: {e})"
        if kernels == "triton":
            raise RuntimeError(f"--kernels triton needs the fused kernels, but {what}; {_INSTALL}, or use "
                               f"--kernels reference") from e
        if is_main(rank) and not _warned:
            _warned = True
            warnings.warn(f"{what}: --kernels auto falls back to the reference PyTorch modules and assigner; "
                          f"{_INSTALL}", RuntimeWarning, stacklevel=3)
        return None


def accelerate(model, backend="auto", rank=-1):
    """Swap the fused drop-in modules into ``model`` in place (module and parameter names are kept); returns
    the model. 'reference', or 'auto' without the kernels package, leaves it as it is."""
    fn = _import("accelerate", backend, rank)
    if fn is not None:
        fn(model, backend=backend)
    return model


def measure_dispatch(model, kernels, dispatch, shape, dtype, amp, rank=-1):
    """The trainer's ``--dispatch`` (which path the fused drop-ins take, ``yolov10_kernels.dispatch``): 'fused' or
    'reference' set it; 'measure' (also None with YOLOV10_KERNELS_DISPATCH=measure) times each drop-in's fused
    path against its reference path on a copy of ``model`` (eval, and train forward + backward) at a ``shape``
    input in ``dtype`` (``amp``: a float32 model under autocast) and keeps the faster. Returns the text to log
    once (the decision table, or why nothing was measured), or None when nothing was measured or
    ``kernels`` is 'reference' (or 'auto' without the package). A bad ``dispatch`` is a ValueError."""
    if dispatch is not None and dispatch not in DISPATCH_CHOICES:
        raise ValueError(f"dispatch must be one of {', '.join(DISPATCH_CHOICES)}, got {dispatch!r}")
    module = _import("dispatch", kernels, rank)
    if module is None or (module.policy() if dispatch is None else module.set_policy(dispatch)) != "measure":
        return None
    return str(module.measure(model, shape, dtype, train=True, amp=amp))


def fused_modules(model):
    """{op name: number of its fused drop-ins} inside ``model``; empty when the kernels package was never
    imported, since then no module can come from it."""
    package = sys.modules.get("yolov10_kernels")
    return package.swapped(model) if package is not None else {}


def assigner_factory(kernels, rank=-1):
    """(factory or None, description) for ``V10DetectLoss(assigner_factory=...)``: the fused task-aligned
    assigner under 'auto' / 'triton', None (the loss's reference assigner) otherwise."""
    cls = _import("FusedTaskAlignedAssigner", kernels, rank)
    if cls is None:
        suffix = "" if kernels == "reference" else " (fused one unavailable)"
        return None, f"reference TaskAlignedAssigner{suffix}"
    return functools.partial(cls, backend=kernels), f"FusedTaskAlignedAssigner(backend={kernels!r})"
