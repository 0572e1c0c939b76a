"""FusedClsHead: drop-in for v10Detect's light classification branch (cv3[i] and one2one_cv3[i]):
Seq(Seq(Conv DW3x3, Conv PW c->c3), Seq(Conv DW3x3, Conv PW c3->c3), nn.Conv2d(c3, nc, 1, bias)).
Eval: 2 Triton launches (ops.dw_chain_infer.cls_head_infer); train: ops.conv_chain.conv_chain_train."""
import torch.nn as nn

from yolov10.head import v10Detect

from ..backend import BACKENDS
from ..ops.dw_chain_infer import cls_head_infer
from ._dropin import DropIn
from ._fold import FoldedChain, _check_conv2d, check_conv, fold_dw, fold_pw


class FusedClsHead(DropIn, nn.Sequential):
    """An nn.Sequential with the reference branch's children "0", "1", "2" (state_dict keys unchanged)."""

    def _layers(self):
        return [self[0][0], self[0][1], self[1][0], self[1][1], self[2]]

    def _reference_forward(self, x):
        return nn.Sequential.forward(self, x)

    def _fold(self):
        l1, l2, l3, l4, l5 = self._layers()
        return FoldedChain([fold_dw(l1), fold_pw(l2), fold_dw(l3), fold_pw(l4), fold_pw(l5)])

    def _infer(self, x, folded):
        return cls_head_infer(x, folded)


def supported(seq):
    if type(seq) is not nn.Sequential or len(seq) != 3:
        return False
    a, b, last = seq
    if not all(type(s) is nn.Sequential and len(s) == 2 for s in (a, b)):
        return False
    return (check_conv(a[0], depthwise=True, act=True) and check_conv(a[1], depthwise=False)
            and check_conv(b[0], depthwise=True, act=True) and check_conv(b[1], depthwise=False)
            and _check_conv2d(last, depthwise=False))


def swap(model, backend="auto"):
    """Replace the cls branches of every v10Detect (cv3 and one2one_cv3, all levels) in place; returns the
    number of FusedClsHead modules."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    n = 0
    for head in [m for m in model.modules() if isinstance(m, v10Detect)]:
        for name in ("cv3", "one2one_cv3"):
            branches = getattr(head, name, None)
            if branches is None:
                continue
            for i, seq in enumerate(branches):
                if isinstance(seq, FusedClsHead):
                    seq.set_backend(backend)
                    n += 1
                elif supported(seq):
                    branches[i] = FusedClsHead.from_module(seq, backend)
                    n += 1
    return n
