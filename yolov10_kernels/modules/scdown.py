"""FusedSCDown: drop-in for yolov10.modules.SCDown (PW + BN + SiLU -> DW kxk stride s + BN). Eval: 1 Triton launch
(ops.dw_chain_infer.pw_dw_infer); train: ops.conv_chain.conv_chain_train; otherwise the reference forward."""
from yolov10.modules import SCDown

from ..ops.dw_chain_infer import scdown_infer
from ._dropin import DropIn, swap_modules
from ._fold import FoldedChain, check_conv, fold_dw, fold_pw


class FusedSCDown(DropIn, SCDown):
    """Same submodules (cv1 PW, cv2 DW) and state_dict keys as SCDown; keeps the layer attributes (i, f)."""

    def _layers(self):
        return [self.cv1, self.cv2]

    def _reference_forward(self, x):
        return SCDown.forward(self, x)

    def _fold(self):
        return FoldedChain([fold_pw(self.cv1), fold_dw(self.cv2)])

    def _infer(self, x, folded):
        return scdown_infer(x, folded)


def supported(m):
    return (check_conv(m.cv1, depthwise=False)
            and check_conv(m.cv2, depthwise=True, stride=m.cv2.conv.stride[0]) and m.cv2.conv.stride[0] >= 1)


def swap(model, backend="auto"):
    """Replace every SCDown of `model` by a FusedSCDown in place; returns the number of FusedSCDown modules."""
    return swap_modules(model, SCDown, FusedSCDown, supported, backend)
