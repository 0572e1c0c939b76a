"""Training-mode fused forward/backward of YOLOv10's depthwise-separable conv chains (CIB, SCDown, the v10Detect
light cls head), on the ops in dwconv.py and pwconv.py.

    out = chain_train(x, specs, residual=False)

`specs` is a list of `ConvSpec` (yolov10_kernels/modules/chain.py reads them off the reference layers):
- "dw": a depthwise conv (weight (C, 1, k, k); k = 3, 5 or 7; stride 1 or 2) + BN + act (SiLU or identity);
- "pw": a pointwise conv (weight (C_out, C_in, 1, 1), stride 1) + BN + act;
- "repvgg": a RepVGGDW, two stride-1 depthwise convs + BNs (weight/bn the large one, weight2/bn2 the small
  one), summed, then act;
- "final": a plain 1x1 conv with an optional bias and no BN, as the last layer only (the cls head's end).
BNs are nn.BatchNorm2d modules or `BatchNormSpec`s (ops/batchnorm.py). `residual=True` adds x to the result
(the CIB shortcut).

Semantics equal the reference modules in train mode: each BN normalises with the batch mean and biased variance
and its eps; running_mean/running_var (unbiased) and num_batches_tracked are updated in place exactly as
nn.BatchNorm2d does (momentum, or the cumulative average when momentum is None). A BN in eval mode that tracks
running statistics normalises with them, as the reference does (a frozen BN inside a training model).

How it runs: every conv writes its raw output and per-channel batch statistics (merged partial Welford
statistics, on the device); one small kernel per BN (ops/batchnorm.bn_affine) turns them into scale/shift and
updates the running statistics, and the next conv applies BN + act to its input tiles on the fly (its prologue).
No per-layer glue runs as torch ops: a training step dispatches fewer host ops than the eager modules. The last
conv of a chain runs twice over its input inside one op (ops/dw_conv_bn_act.py): a statistics-only pass, then a
pass whose epilogue writes act(BN(y)) (+ x) directly, so its raw output never exists. A RepVGGDW is one op
(ops/dw_repvgg_bn.py): the statistics of both branches from one pass, then one 7x7 depthwise conv with the
BN-scaled, summed weights (w7 * s7 + pad(w3 * s3)) gives the pre-activation, as exact in train mode as the
two-branch form. Backward recomputes activations from the saved raw tensors: what is saved for backward is the
chain input, the raw outputs that feed a later conv, and per-channel vectors (see tests/test_chain_train.py for
the measured ratio to the reference modules)."""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .batchnorm import BatchNormSpec, batch_scale_shift, running_scale_shift, uses_batch_stats
from .dw_conv_bn_act import dw_conv_bn_act_train
from .dw_repvgg_bn import dw_repvgg_train
from .dwconv import dw_conv_bn
from .pwconv import pw_conv_bn
from .utils import acc_dtype, check_device, check_tensor, conv_out_size

__all__ = ["ConvSpec", "chain_train"]

VALID_KINDS = ("dw", "pw", "repvgg", "final")  # the ConvSpec kinds chain_train runs


@dataclass
class ConvSpec:
    """One layer of a chain (see the module docstring); tensors are shared with the layer it describes."""
    kind: str
    weight: torch.Tensor
    bn: Optional[BatchNormSpec] = None  # or an nn.BatchNorm2d: anything with its attribute names
    act: bool = False
    stride: int = 1
    weight2: Optional[torch.Tensor] = None  # "repvgg": the small branch
    bn2: Optional[BatchNormSpec] = None
    bias: Optional[torch.Tensor] = None  # a conv's own bias: "final" only (train); a folded conv's (eval)
    bias2: Optional[torch.Tensor] = None

    @property
    def cin(self):
        return self.weight.shape[0] if self.kind in ("dw", "repvgg") else self.weight.shape[1]

    @property
    def cout(self):
        return self.weight.shape[0]

    def out_hw(self, h, w):
        k = self.weight.shape[-1]
        return conv_out_size(h, k, self.stride), conv_out_size(w, k, self.stride)


def _check_weight(where, s, w, kind):
    if kind in ("dw", "repvgg"):
        ok = w.dim() == 4 and w.shape[1] == 1 and w.shape[2] == w.shape[3] and w.shape[-1] in (3, 5, 7)
        want = "(C, 1, k, k) with k in 3, 5, 7"
    else:
        ok = w.dim() == 4 and w.shape[2] == w.shape[3] == 1
        want = "(C_out, C_in, 1, 1)"
    if not ok:
        raise ValueError(f"{where} ({s.kind}): weight must be {want}, got {tuple(w.shape)}")


def _check_spec(i, s, last):
    where = f"layers[{i}]"
    if s.kind not in VALID_KINDS:
        raise ValueError(f"{where}: unknown kind {s.kind!r}; expected one of {VALID_KINDS}")
    _check_weight(where, s, s.weight, s.kind)
    if s.kind == "final":
        if not last:
            raise ValueError(f"{where}: a plain (final) 1x1 conv is supported only as the last layer")
        return
    if s.bn is None or (s.kind == "repvgg" and s.bn2 is None):
        raise ValueError(f"{where} ({s.kind}): needs its BN: the training path cannot use a BN already folded into "
                         f"the conv (fuse_bn() / fuse())")
    if s.bias is not None or s.bias2 is not None:
        raise ValueError(f"{where} ({s.kind}): a conv followed by a BN must have no bias")
    if s.stride not in ((1, 2) if s.kind == "dw" else (1,)):
        raise ValueError(f"{where} ({s.kind}): stride must be {'1 or 2' if s.kind == 'dw' else '1'}, got {s.stride}")
    if s.kind == "repvgg":
        _check_weight(where, s, s.weight2, "dw")
        if s.weight2.shape[0] != s.cout or s.weight2.shape[-1] > s.weight.shape[-1]:
            raise ValueError(f"{where} (repvgg): expected a large and a small depthwise conv over the same channels")


def _check_chain(x, specs, residual):
    """Validate x against the specs; returns the chain's output (H, W)."""
    check_tensor("x", x, dim=4)
    check_device(x)
    if not specs:
        raise ValueError("layers is empty")
    for i, s in enumerate(specs):
        _check_spec(i, s, i == len(specs) - 1)
        for name, p in (("weight", s.weight), ("weight", s.weight2), ("bias", s.bias)):
            if p is not None and p.device != x.device:
                raise ValueError(f"layers[{i}] {name} is on {p.device} but x is on {x.device}: all tensors must "
                                 f"be on one device")
            if p is not None and not p.dtype.is_floating_point:
                raise TypeError(f"layers[{i}] {name} must be floating point, got {p.dtype}")
    for i, (a, b) in enumerate(zip(specs, specs[1:])):
        if a.cout != b.cin:
            raise ValueError(f"layers[{i + 1}] expects {b.cin} input channels but layers[{i}] gives {a.cout}")
    if x.shape[1] != specs[0].cin:
        raise ValueError(f"x has {x.shape[1]} channels but layers[0] expects {specs[0].cin}")
    N, _, H, W = x.shape
    for i, s in enumerate(specs):
        H, W = s.out_hw(H, W)
        bns = [bn for bn in (s.bn, s.bn2) if bn is not None]
        if any(uses_batch_stats(bn, bn.training) for bn in bns) and N * H * W <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)} "
                             f"(batch statistics over {N * H * W} value at layers[{i}])")
    if residual and (specs[-1].cout != x.shape[1] or (H, W) != tuple(x.shape[2:])):
        raise ValueError(f"residual=True needs the chain's output shape {(x.shape[0], specs[-1].cout, H, W)} to equal "
                         f"x's {tuple(x.shape)}")


class _Input:
    """The tensor entering the next conv: raw (a conv output) with the BN affine and act still to apply in that
    conv's prologue, or an activation already (scale None)."""

    def __init__(self, x):
        self.t, self.scale, self.shift, self.act = x, None, None, False

    def args(self, weight):
        return self.t, weight, self.scale, self.shift

    def set(self, y, scale, shift, act):
        self.t, self.scale, self.shift, self.act = y, scale, shift, act


def _dw_stats(cur, weight, stride, write_out, bn, count):
    """A depthwise conv writing its raw output (when asked) and its BN's (scale, shift): from the batch
    statistics the conv's epilogue gathers (running statistics updated), or from the running statistics."""
    if uses_batch_stats(bn, bn.training):
        y, mean, var = dw_conv_bn(*cur.args(weight), None, None, None, stride, cur.act, False, write_out, True)
        return y, batch_scale_shift(bn, mean, var, count, bn.training)
    y = dw_conv_bn(*cur.args(weight), None, None, None, stride, cur.act, False, True, False)[0] if write_out else None
    return y, running_scale_shift(bn, acc_dtype(cur.t))


def _pw_step(cur, s, count, last, res):
    if uses_batch_stats(s.bn, s.bn.training):
        y, mean, var = pw_conv_bn(*cur.args(s.weight), None, cur.act, True)
        scale, shift = batch_scale_shift(s.bn, mean, var, count, s.bn.training)
    else:
        y = pw_conv_bn(*cur.args(s.weight), None, cur.act, False)[0]
        scale, shift = running_scale_shift(s.bn, acc_dtype(cur.t))
    if not last:
        cur.set(y, scale, shift, s.act)
        return None
    return _torch_epilogue(y, scale, shift, s.act, res)


def _torch_epilogue(y, scale, shift, act, res):
    """BN affine + act (+ residual) in torch: for a chain ending in a conv whose op has no epilogue (not a YOLOv10
    chain)."""
    out = y * scale.to(y.dtype).view(1, -1, 1, 1) + shift.to(y.dtype).view(1, -1, 1, 1)
    out = F.silu(out) if act else out
    return out + res if res is not None else out


def _dw_step(cur, s, count, last, res):
    if last and uses_batch_stats(s.bn, s.bn.training):  # statistics and epilogue passes in one op
        return dw_conv_bn_act_train(*cur.args(s.weight), res, s.bn, s.stride, cur.act, s.act)
    # the last conv's raw output is never written: a statistics-only pass, then an epilogue pass (below)
    y, (scale, shift) = _dw_stats(cur, s.weight, s.stride, not last, s.bn, count)
    if not last:
        cur.set(y, scale, shift, s.act)
        return None
    return dw_conv_bn(*cur.args(s.weight), scale, shift, res, s.stride, cur.act, s.act, True, False)[0]


def _repvgg_step(cur, s, count, last, res):
    """Both BNs on batch statistics: one op (dw_repvgg_bn.dw_repvgg_train). Else each branch's BN affine (from its
    statistics-only pass, or its running statistics), then one large depthwise conv with the BN-scaled, summed
    weights."""
    if all(uses_batch_stats(bn, bn.training) for bn in (s.bn, s.bn2)):
        z, ones, shift = dw_repvgg_train(*cur.args(s.weight), s.weight2, s.bn, s.bn2, cur.act)
        if last:
            return _torch_epilogue(z, ones, shift, s.act, res)
        cur.set(z, ones, shift, s.act)
        return None
    (sc7, sh7), (sc3, sh3) = (_dw_stats(cur, w, 1, False, bn, count)[1] for w, bn in ((s.weight, s.bn),
                                                                                      (s.weight2, s.bn2)))
    sd = sc7.dtype
    pad = (s.weight.shape[-1] - s.weight2.shape[-1]) // 2
    wc = s.weight.to(sd) * sc7.view(-1, 1, 1, 1) + F.pad(s.weight2.to(sd) * sc3.view(-1, 1, 1, 1), [pad] * 4)
    bias = sh7 + sh3
    ones = torch.ones_like(bias)
    if last:
        return dw_conv_bn(*cur.args(wc), ones, bias, res, 1, cur.act, s.act, True, False)[0]
    z = dw_conv_bn(*cur.args(wc), None, None, None, 1, cur.act, False, True, False)[0]
    cur.set(z, ones, bias, s.act)
    return None


def _final_step(cur, s, count, last, res):
    y = pw_conv_bn(*cur.args(s.weight), s.bias, cur.act, False)[0]
    return y + res if res is not None else y


_STEPS = {"dw": _dw_step, "pw": _pw_step, "repvgg": _repvgg_step, "final": _final_step}


def chain_train(x, specs, residual=False):
    """Fused train-mode forward of the chain `specs` on x (see the module docstring); differentiable in x and
    every conv weight, BN weight/bias and the final conv's bias; updates the BN running statistics in place."""
    _check_chain(x, specs, residual)
    res = x if residual else None
    cur = _Input(x)
    h, w = x.shape[2:]
    for i, s in enumerate(specs):
        h, w = s.out_hw(h, w)
        out = _STEPS[s.kind](cur, s, x.shape[0] * h * w, i == len(specs) - 1, res)
        if out is not None:
            return out
    raise AssertionError("unreachable: the last step returns the output")
