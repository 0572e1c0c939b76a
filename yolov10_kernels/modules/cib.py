"""FusedCIB: drop-in for yolov10.modules.CIB (inside C2fCIB). Eval: 2 Triton launches (ops.dw_chain_infer);
train: ops.conv_chain.conv_chain_train; otherwise the reference forward."""
from yolov10.modules import CIB

from ..ops.dw_chain_infer import cib_infer
from ._dropin import DropIn, swap_modules
from ._fold import FoldedChain, check_conv, check_dw_or_repvgg, fold_dw, fold_pw


class FusedCIB(DropIn, CIB):
    """Same submodules (cv1 = [DW, PW, DW or RepVGGDW, PW, DW]) and state_dict keys as CIB."""

    def _layers(self):
        return list(self.cv1)

    def _residual(self):
        return bool(self.add)

    def _reference_forward(self, x):
        return CIB.forward(self, x)

    def _fold(self):
        l1, l2, l3, l4, l5 = self.cv1
        return FoldedChain([fold_dw(l1), fold_pw(l2), fold_dw(l3), fold_pw(l4), fold_dw(l5)], residual=bool(self.add))

    def _infer(self, x, folded):
        return cib_infer(x, folded)


def supported(m):
    """The layouts the kernels implement: stride-1 odd-k DW convs, 1x1 PW convs, SiLU/Identity; last DW 3x3."""
    layers = list(m.cv1)
    if len(layers) != 5:
        return False
    l1, l2, l3, l4, l5 = layers
    return (check_conv(l1, depthwise=True) and check_conv(l2, depthwise=False) and check_dw_or_repvgg(l3)
            and check_conv(l4, depthwise=False) and check_conv(l5, depthwise=True, k=3))


def swap(model, backend="auto"):
    """Replace every CIB of `model` by a FusedCIB in place; returns the number of FusedCIB modules."""
    return swap_modules(model, CIB, FusedCIB, supported, backend)
