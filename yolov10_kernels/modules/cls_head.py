"""FusedClsHead: drop-in for the detection head's light classification branch (cv3[i] and one2one_cv3[i]):
Seq(Seq(Conv DW3x3, Conv PW c->c3), Seq(Conv DW3x3, Conv PW c3->c3), nn.Conv2d(c3, nc, 1, bias)).
Eval: 2 Triton launches (ops.chain_eval.cls_head_infer); train: ops.chain_train."""
import torch.nn as nn

from yolov10.head import v10Detect

from ..ops.chain_eval import cls_head_infer
from .chain import read_supported
from .dropin import ChainDropIn, swap_modules

KINDS = ("dw", "pw", "dw", "pw", "final")
BRANCHES = ("cv3", "one2one_cv3")


class FusedClsHead(ChainDropIn):
    """An nn.Sequential with the reference branch's children "0", "1", "2" (state_dict keys unchanged)."""

    def layers(self):
        return [self[0][0], self[0][1], self[1][0], self[1][1], self[2]]

    def infer(self, x, folded):
        return cls_head_infer(x, folded)


def supported(seq):
    if type(seq) is not nn.Sequential or len(seq) != 3 or not all(
            type(s) is nn.Sequential and len(s) == 2 for s in seq[:2]):
        return False
    specs = read_supported(seq, KINDS)
    return specs is not None and all(s.stride == 1 for s in specs) and specs[0].act and specs[2].act


def swap(model, backend="auto", ref_cls=None):
    """Replace the cls branches (cv3 and one2one_cv3, all levels) of every head of class ref_cls (default
    yolov10's v10Detect) in place; returns the number of FusedClsHead modules."""
    heads = [m for m in model.modules() if isinstance(m, ref_cls or v10Detect)]
    branches = [getattr(h, name) for h in heads for name in BRANCHES if getattr(h, name, None) is not None]
    return swap_modules(model, nn.Sequential, FusedClsHead, supported, backend, parents=branches)
