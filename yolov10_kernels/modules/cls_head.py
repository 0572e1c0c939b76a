"""FusedClsHead: drop-in for the detection head's light classification branch (cv3[i] and one2one_cv3[i]):
Seq(Seq(Conv DW3x3, Conv PW c->c3), Seq(Conv DW3x3, Conv PW c3->c3), nn.Conv2d(c3, nc, 1, bias)), as in
YOLOv10's v10Detect and every non-legacy ultralytics Detect head (YOLO11, YOLO12, YOLO26; Segment, Pose, OBB).
Eval: 2 Triton launches (ops.chain_eval.cls_head_infer); train: ops.chain_train."""
import torch.nn as nn

from yolov10.head import v10Detect

from ..ops.chain_eval import cls_head_infer
from .chain import read_supported
from .dropin import ChainDropIn, swap_modules

LAYER_PATTERN = ("dw", "pw", "dw", "pw", "final")  # the kind of each layer of a cls branch, in order
BRANCHES = ("cv3", "one2one_cv3")


class FusedClsHead(ChainDropIn):
    """An nn.Sequential with the reference branch's children "0", "1", "2" (state_dict keys unchanged)."""

    def layers(self):
        return [self[0][0], self[0][1], self[1][0], self[1][1], self[2]]

    def infer(self, x, folded):
        return cls_head_infer(x, folded)


def light_shape(seq):
    """The light branch's nesting, Seq(Seq(a, b), Seq(c, d), e), whatever the layers: what tells it from a legacy
    dense branch (YOLOv8's Seq(Conv 3x3, Conv 3x3, Conv2d)), whichever class built it."""
    return type(seq) is nn.Sequential and len(seq) == 3 and all(
        type(s) is nn.Sequential and len(s) == 2 for s in seq[:2])


def supported(seq):
    if not light_shape(seq):
        return False
    specs = read_supported(seq, LAYER_PATTERN)
    return specs is not None and all(s.stride == 1 for s in specs) and specs[0].act and specs[2].act


def swap(model, backend="auto", ref_cls=None, exclude=()):
    """Replace the light cls branches (cv3 and one2one_cv3, all levels) of every head of class ref_cls (default
    yolov10's v10Detect; subclasses too, except those of `exclude`) in place; returns the number of FusedClsHead
    modules. Heads are recognised by structure: a branch list whose branches are not all light (a legacy dense
    head) is left alone without a warning; a light branch the kernels cannot run (a folded BN) warns."""
    heads = [m for m in model.modules() if isinstance(m, ref_cls or v10Detect) and not isinstance(m, exclude)]
    branches = [getattr(h, name) for h in heads for name in BRANCHES if getattr(h, name, None) is not None]
    light = [b for b in branches if all(light_shape(seq) or isinstance(seq, FusedClsHead) for seq in b)]
    return swap_modules(model, nn.Sequential, FusedClsHead, supported, backend, parents=light)
