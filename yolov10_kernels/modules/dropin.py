"""The one drop-in machinery: build a drop-in from a reference module (sharing its submodules, parameters,
buffers and attributes, so state_dict keys stay the same) and swap drop-ins into a model in place.

A drop-in class is a mixin (`DropIn` subclass) combined with the class of the module it replaces:
`FusedCIB.from_module(m)` returns an instance of `FusedCIB.for_class(type(m))`, a subclass of both, so a
drop-in built from the official (ultralytics) classes, which have the same structure under other names,
works the same way and is still an instance of the reference module's class."""
import copy

import torch

from .. import gpus
from ..backend import BACKENDS, check_backend, use_triton, warn_once
from ..dispatch import fused_chosen, signature
from ..ops.chain_train import chain_train
from .chain import fold_chain, read_chain


@torch.compiler.assume_constant_result
def use_triton_on(backend: str, device_type: str) -> bool:
    """backend.use_triton as a constant for torch.compile (it depends only on the backend and device type)."""
    return use_triton(backend, device_type)


class DropIn:
    """Mixin of every drop-in module. Subclasses define `forward`; `reference_forward(x)` is the replaced
    class's own forward."""

    backend = "auto"
    _dynamic_classes = {}
    # instance attributes the replaced module does not have
    _dropin_state = ("backend", "_cache", "_dispatch_sig", "_unfusable", "_backward_checked")

    @classmethod
    def for_class(cls, base):
        """The drop-in class for modules of class `base`: cls itself when it derives from base, else a subclass
        of (cls, base), made once (instances pickle as `base`, see __reduce_ex__)."""
        if issubclass(cls, base):
            return cls
        key = (cls, base)
        if key not in DropIn._dynamic_classes:
            name = f"{cls.__name__}_{base.__module__.replace('.', '_')}_{base.__name__}"
            new = type(name, (cls, base), {"__module__": cls.__module__, "__qualname__": name, "reference_class": base})
            DropIn._dynamic_classes[key] = new
        return DropIn._dynamic_classes[key]

    @classmethod
    def from_module(cls, ref, backend="auto"):
        """A drop-in holding ref's submodules, parameters, buffers, hooks and attributes (ref is left as is)."""
        klass = cls.for_class(type(ref))
        new = klass.__new__(klass)
        new.__dict__.update(ref.__dict__)
        for name in ("_parameters", "_buffers", "_modules"):
            new.__dict__[name] = dict(ref.__dict__[name])
        new.set_backend(backend)
        return new

    def set_backend(self, backend):
        """A backend that cannot run here fails on the first call that needs it (accelerate() checks up front)."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self._dispatch_sig = signature(self)  # the measured dispatch's key, read once (yolov10_kernels.dispatch)

    def fused_path(self, x):
        """Whether this call on input x runs the fused kernels: the backend runs Triton on x's device and, under
        'auto', the measured dispatch (yolov10_kernels.dispatch) has not chosen the reference path for this
        module's structure, x's shape bucket and dtype, and the training flag."""
        if not use_triton_on(self.backend, x.device.type):
            return False
        return self.backend != "auto" or fused_chosen(self._dispatch_sig, tuple(x.shape), x.dtype, self.training)

    def reference_forward(self, *args):
        return self.reference_class.forward(self, *args)

    def guarded(self, x, fused):
        """fused(x), this module's Triton path, where the GPU at hand can run it; otherwise the reference forward
        with one warning naming the module and the reason: bf16 on a GPU without bf16 tensor cores (T4), or a
        kernel that does not compile or launch there (a Triton error on a CUDA tensor: out of shared memory or
        registers on a GPU no profile describes, a target Triton cannot compile for), after which this module
        stays on its reference forward and the run goes on. The backward's kernels are checked too, before the
        first training forward of each dtype (_check_backward): in loss.backward() it would be too late to fall
        back."""
        why = self.__dict__.get("_unfusable") or _unsupported_dtype(x)
        if why is None:
            try:
                self._check_backward(x, fused)
                return fused(x)
            except Exception as e:  # noqa: BLE001 - only Triton's own errors on a GPU are caught, see below
                if not on_gpu(x) or not type(e).__module__.startswith("triton") \
                        or type(e).__name__ == "InterpreterError":
                    raise
                why = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                self.__dict__["_unfusable"] = why
        name = type(self).__name__
        warn_once(("unfusable", name, why[:80]), f"yolov10_kernels: {name} runs its reference forward on "
                  f"{gpus.device_profile(x.device).name}: {why}")
        return self.reference_forward(x)

    def _check_backward(self, x, fused):
        """Once per dtype, on a GPU, in a training forward: the fused forward and backward run on a copy of this
        module and a detached x (its parameters' .grad and running statistics stay untouched), so that a backward
        kernel that cannot compile or launch raises here. fused: a method of this module (else nothing to do)."""
        checked = self.__dict__.setdefault("_backward_checked", set())
        if (not on_gpu(x) or not (self.training and torch.is_grad_enabled()) or x.dtype in checked
                or getattr(fused, "__self__", None) is not self):
            return
        twin = copy.deepcopy(self)
        xt = x.detach().requires_grad_()
        out = fused.__func__(twin, xt)
        outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if o.requires_grad]
        params = [p for p in twin.parameters() if p.requires_grad]
        torch.autograd.grad(outs, [xt, *params], [torch.ones_like(o) for o in outs], allow_unused=True)
        checked.add(x.dtype)

    def __reduce_ex__(self, protocol):
        # A pickled model (torch.save(model), ultralytics' checkpoints) holds the module this drop-in replaced,
        # so it loads where this package is absent; accelerate()/patch_ultralytics() swap it in again.
        state = {k: v for k, v in self.__dict__.items() if k not in self._dropin_state}
        return object.__new__, (self.reference_class,), state  # copyreg.__newobj__ insists on type(self)

    def __deepcopy__(self, memo):  # a copy (an EMA, a benchmark's copy) stays a drop-in
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
        return new

    def extra_repr(self):
        return f"backend={self.backend!r}"


def replace_modules(parents, match, make):
    """Replace every child `child` of the modules `parents` with match(child) true by make(child), in place.
    Returns the count."""
    n = 0
    for parent in list(parents):
        for name, child in list(parent.named_children()):
            if match(child):
                setattr(parent, name, make(child))
                n += 1
    return n


def swap_modules(model, ref_classes, dropin, supported, backend, parents=None):
    """Swap every module whose class is one of `ref_classes` (exactly, not a subclass) and that `supported`
    accepts for `dropin.from_module(m, backend)`, among the children of `parents` (default: every module of
    the model); drop-ins of `dropin` already there get the new backend. Returns how many `dropin` modules the
    model now has."""
    check_backend(backend)
    ref_classes = tuple(ref_classes) if isinstance(ref_classes, (tuple, list)) else (ref_classes,)
    for m in model.modules():
        if isinstance(m, dropin):
            m.set_backend(backend)
    skipped = []

    def match(m):
        if type(m) not in ref_classes:
            return False
        if not supported(m):
            skipped.append(type(m).__name__)
            return False
        return True

    replace_modules(model.modules() if parents is None else parents, match, lambda m: dropin.from_module(m, backend))
    if skipped:
        warn_once(("skipped", dropin.__name__, len(skipped)),
                  f"yolov10_kernels: {len(skipped)} {skipped[0]} module(s) have a layout the fused kernels do not "
                  "implement; they keep the reference forward")
    return sum(isinstance(m, dropin) for m in model.modules())


class ChainCache:
    """What a chain drop-in keeps between calls: its layers' specs, read once (they hold the layers' parameters
    and BN modules, so BN mode, hyper-parameters and running statistics are always the live ones), and the
    eval-mode folded weights, rebuilt when a tracked tensor changes (storage, dtype, device or in-place version:
    optimizer steps, load_state_dict and BN running-stat updates all bump versions). The owner clears both where
    the layers may change: train()/eval(), .to()/.half()/... and load_state_dict. Not used while torch.compile
    traces (reading and folding are traced instead); never pickled or copied with the module."""

    def __init__(self):
        self.clear()

    def clear(self):
        self.specs = self.fold_key = self.folded = None

    def get_specs(self, read):
        if torch.compiler.is_compiling():
            return read()
        if self.specs is None:
            self.specs = read()
        return self.specs

    def get_folded(self, tensors, build, extra=()):
        if torch.compiler.is_compiling():
            return build()
        try:
            key = (tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors), tuple(extra))
        except RuntimeError:  # e.g. inference tensors carry no version counter
            return build()
        if key != self.fold_key:
            self.folded, self.fold_key = build(), key
        return self.folded

    def __reduce__(self):  # pickle and deepcopy make an empty cache
        return ChainCache, ()


def has_every_bn(specs):
    """ops.chain_train needs every conv's BN (batch statistics where the BN trains, running statistics where it
    is in eval mode); a BN folded into its conv (model.fuse(), a re-parameterised RepVGGDW) is gone."""
    return all(s.bn is not None and (s.kind != "repvgg" or s.bn2 is not None) for s in specs if s.kind != "final")


def on_gpu(x):
    """Whether x is on a CUDA device (where a Triton error means the GPU cannot run a kernel; on the CPU, under
    the interpreter, it is a bug to see)."""
    return x.device.type == "cuda"


def _unsupported_dtype(x):
    """Why the fused kernels cannot take x here (None: they can): bf16 - x's, or autocast's for an fp32 x - on a
    GPU without bf16 tensor cores, where Triton has no bf16 dot to compile (the reference runs in bf16 there)."""
    if x.device.type != "cuda" or gpus.device_profile(x.device).bf16:
        return None
    autocast = torch.is_autocast_enabled("cuda") and x.dtype == torch.float32
    if (torch.get_autocast_dtype("cuda") if autocast else x.dtype) == torch.bfloat16:
        return "bfloat16 needs bf16 tensor cores (compute capability 8.0+); use float16 for the fused kernels"
    return None


def _autocast_input(x):
    dev = x.device.type
    if torch.is_autocast_enabled(dev) and x.dtype == torch.float32:
        return x.to(torch.get_autocast_dtype(dev))
    return x


class ChainDropIn(DropIn):
    """Drop-in of a depthwise-separable chain (CIB, SCDown, the cls head). Per call: the reference forward
    unless the backend runs Triton here; in eval mode (every BN on running statistics) without gradients the
    eval kernels on the folded weights (cached); otherwise (train mode, or eval mode with gradients needed)
    `ops.chain_train`, or, where a BN is folded away, the reference forward with a one-time warning.
    Subclasses define layers(), infer(x, folded) and, with a shortcut, residual()."""

    def set_backend(self, backend):
        super().set_backend(backend)
        self._cache = ChainCache()

    def layers(self):
        raise NotImplementedError

    def residual(self):
        return False

    def infer(self, x, folded):
        raise NotImplementedError

    def specs(self):
        """The layers' ConvSpecs (modules/chain.py), read on first use and kept (see ChainCache)."""
        return self._cache.get_specs(lambda: read_chain(self.layers()))

    def folded(self):
        """The eval-mode folded weights (cached until a parameter or buffer changes)."""
        specs = self.specs()

        def build():
            with torch.no_grad():
                return fold_chain(specs, self.residual())
        tensors = list(self.parameters()) + list(self.buffers())
        return self._cache.get_folded(tensors, build, extra=[bn.eps for s in specs for bn in (s.bn, s.bn2) if bn])

    def forward(self, x):
        if not self.fused_path(x):
            return self.reference_forward(x)
        return self.guarded(x, self._fused_forward)

    def _fused_forward(self, x):
        specs = self.specs()
        eval_mode = not any(bn.training for s in specs for bn in (s.bn, s.bn2) if bn is not None)
        if eval_mode and not self._needs_grad(x):
            return self.infer(_autocast_input(x), self.folded())
        # the eval kernels have no backward: with gradients, eval mode runs the training op too, whose BNs in
        # eval mode normalise with their running statistics (and leave them as they are)
        if has_every_bn(specs):
            return chain_train(x, specs, residual=self.residual())
        warn_once(("folded-bn", type(self).__name__),
                  f"yolov10_kernels: a {type(self).__name__} with a BN folded into its conv (model.fuse()) runs its "
                  "reference forward when gradients are needed: the fused training kernels differentiate through "
                  "the BN (under torch.no_grad() the eval kernels run)")
        return self.reference_forward(x)

    def _needs_grad(self, x):
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def _clear_cache(self):
        if getattr(self, "_cache", None) is not None:  # set by set_backend()
            self._cache.clear()

    def train(self, mode=True):
        self._clear_cache()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._clear_cache()  # .to()/.half()/.cuda() replace the buffers (and, by a torch.__future__ flag, parameters)
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._clear_cache()  # load_state_dict(assign=True) replaces parameters and buffers
        return super()._load_from_state_dict(*args, **kwargs)
