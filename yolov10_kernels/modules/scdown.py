"""FusedSCDown: drop-in for SCDown (PW + BN + SiLU -> DW kxk stride s + BN). Eval: 1 Triton launch
(ops.chain_eval.scdown_infer); train: ops.chain_train; otherwise the reference forward."""
from yolov10.modules import SCDown

from ..ops.chain_eval import scdown_infer
from .chain import read_supported
from .dropin import ChainDropIn, swap_modules


class FusedSCDown(ChainDropIn):
    """Same submodules (cv1 PW, cv2 DW) and state_dict keys as SCDown; keeps the layer attributes (i, f)."""

    def layers(self):
        return [self.cv1, self.cv2]

    def infer(self, x, folded):
        return scdown_infer(x, folded)


def supported(m):
    return hasattr(m, "cv1") and read_supported([m.cv1, getattr(m, "cv2", None)], ("pw", "dw")) is not None


def swap(model, backend="auto", ref_cls=None):
    """Replace every module of class ref_cls (default yolov10's SCDown) by a FusedSCDown in place; returns the
    number of FusedSCDown modules."""
    return swap_modules(model, ref_cls or SCDown, FusedSCDown, supported, backend)
