"""Shared machinery of the drop-in modules: per-call backend dispatch, eval (folded inference kernels) vs
train (yolov10_kernels.ops.conv_chain) vs reference, the folded-weight cache, and in-place swapping."""
import functools
import types

import torch
import torch.nn as nn

from yolov10.modules import RepVGGDW

from ..backend import BACKENDS, use_triton, warn_once
from ._fold import FoldCache


@functools.lru_cache(maxsize=None)
def _train_fn():
    """yolov10_kernels.ops.conv_chain.conv_chain_train, or None while it is not there."""
    try:
        from ..ops.conv_chain import conv_chain_train
    except ImportError as e:
        warn_once(("conv_chain", str(e)), f"yolov10_kernels: training kernels unavailable ({e}); "
                                          "drop-in modules use the reference forward in train mode")
        return None
    return conv_chain_train


@torch.compiler.assume_constant_result
def _use_triton_on(backend: str, device_type: str) -> bool:
    # use_triton only looks at the tensor's device; a constant for torch.compile
    return use_triton(backend, types.SimpleNamespace(device=torch.device(device_type)))


def _autocast_input(x):
    dev = x.device.type
    if torch.is_autocast_enabled(dev) and x.dtype == torch.float32:
        return x.to(torch.get_autocast_dtype(dev))
    return x


class DropIn:
    """Mixin for a drop-in that shares its submodules (and so its state_dict keys) with the reference module
    it replaces. Subclasses define _layers(), _residual(), _reference_forward(x), _fold(), _infer(x, folded)."""

    backend = "auto"

    @classmethod
    def from_module(cls, ref, backend="auto"):
        """A drop-in holding ref's submodules, parameters, buffers, hooks and attributes (ref is left as is)."""
        new = cls.__new__(cls)
        new.__dict__.update(ref.__dict__)
        for name in ("_parameters", "_buffers", "_modules"):
            new.__dict__[name] = dict(ref.__dict__[name])
        new.set_backend(backend)
        return new

    def set_backend(self, backend):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self._fold_cache = FoldCache()

    # -- subclass interface --
    def _layers(self):
        raise NotImplementedError

    def _residual(self):
        return False

    def _reference_forward(self, x):
        raise NotImplementedError

    def _fold(self):
        raise NotImplementedError

    def _infer(self, x, folded):
        raise NotImplementedError

    # -- dispatch --
    def _bns(self):
        return [m for layer in self._layers() for m in layer.modules() if isinstance(m, nn.BatchNorm2d)]

    def folded(self):
        """The eval-mode folded weights (cached until a parameter or buffer changes)."""
        def build():
            with torch.no_grad():
                return self._fold()
        tensors = list(self.parameters()) + list(self.buffers())
        return self._fold_cache.get(tensors, build, extra=[bn.eps for bn in self._bns()])

    def _trainable_chain(self):
        """Every conv still has its BN in train mode (the training kernels need batch statistics) and no
        RepVGGDW has been re-parameterised; a plain nn.Conv2d (the cls head's last layer) needs no BN."""
        for layer in self._layers():
            if isinstance(layer, nn.Conv2d):
                continue
            if isinstance(layer, RepVGGDW):
                if not hasattr(layer, "conv1"):
                    return False
                convs = (layer.conv, layer.conv1)
            else:
                convs = (layer,)
            for c in convs:
                bn = getattr(c, "bn", None)
                if bn is None or not bn.training:
                    return False
        return True

    def forward(self, x):
        if not _use_triton_on(self.backend, x.device.type):
            return self._reference_forward(x)
        bns = self._bns()
        if not any(bn.training for bn in bns):  # eval: BN with running statistics, folded
            if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
                return self._reference_forward(x)  # the inference kernels have no backward
            return self._infer(_autocast_input(x), self.folded())
        if self._trainable_chain():
            fn = _train_fn()
            if fn is not None:
                return fn(x, self._layers(), residual=self._residual())
        return self._reference_forward(x)

    # -- cache invalidation --
    def train(self, mode=True):
        if getattr(self, "_fold_cache", None) is not None:
            self._fold_cache.clear()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        if getattr(self, "_fold_cache", None) is not None:
            self._fold_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self):
        return f"backend={self.backend!r}"


def replace_modules(root, match, make):
    """Replace every descendant `child` of root with match(child) true by make(child), in place. Returns the count."""
    n = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if match(child):
                setattr(parent, name, make(child))
                n += 1
    return n


def swap_modules(model, ref_cls, fused_cls, supported, backend):
    """Swap every module of exactly type ref_cls that the kernels support for fused_cls; already swapped ones
    get the new backend. Returns how many drop-ins the model now has."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for m in model.modules():
        if isinstance(m, fused_cls):
            m.set_backend(backend)
    skipped = []

    def match(m):
        if type(m) is not ref_cls:
            return False
        if not supported(m):
            skipped.append(m)
            return False
        return True

    replace_modules(model, match, lambda m: fused_cls.from_module(m, backend))
    if skipped:
        warn_once(("skipped", ref_cls.__name__, len(skipped)),
                  f"yolov10_kernels: {len(skipped)} {ref_cls.__name__} module(s) have a layout the fused kernels "
                  "do not implement; they keep the reference forward")
    return sum(isinstance(m, fused_cls) for m in model.modules())
