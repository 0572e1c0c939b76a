"""FusedCIB: drop-in for the CIB block (inside C2fCIB). Eval: 2 Triton launches (ops.chain_eval.cib_infer);
train: ops.chain_train; otherwise the reference forward."""
from yolov10.modules import CIB

from ..ops.chain_eval import cib_infer
from .chain import read_supported
from .dropin import ChainDropIn, swap_modules

LAYER_PATTERN = ("dw", "pw", "dw|repvgg", "pw", "dw")  # the kind of each layer of cv1, in order ("a|b": either)


class FusedCIB(ChainDropIn):
    """Same submodules (cv1 = [DW, PW, DW or RepVGGDW, PW, DW]) and state_dict keys as the CIB it replaces."""

    def layers(self):
        return list(self.cv1)

    def residual(self):
        return bool(self.add)

    def infer(self, x, folded):
        return cib_infer(x, folded)


def supported(m):
    """The layouts the kernels implement: stride-1 odd-k DW convs, 1x1 PW convs, SiLU/Identity; last DW 3x3."""
    specs = read_supported(getattr(m, "cv1", ()), LAYER_PATTERN)
    return specs is not None and all(s.stride == 1 for s in specs) and specs[-1].weight.shape[-1] == 3


def swap(model, backend="auto", ref_cls=None):
    """Replace every module of class ref_cls (default yolov10's CIB) by a FusedCIB in place; returns the
    number of FusedCIB modules."""
    return swap_modules(model, ref_cls or CIB, FusedCIB, supported, backend)
