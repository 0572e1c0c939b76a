"""Training-mode fused forward/backward of YOLOv10's depthwise-separable conv chains (CIB, SCDown, the v10Detect
light cls head), on the ops in dwconv.py and pwconv.py.

    out = conv_chain_train(x, layers, residual=False)

`layers` (a list, tuple or nn.Sequential; nested Sequentials are flattened) holds reference modules:
- `yolov10.modules.Conv`: depthwise (groups == channels; k = 3, 5 or 7; stride 1 or 2) or pointwise (k = 1,
  stride 1), BN, act SiLU or Identity;
- `yolov10.modules.RepVGGDW` (DW7x7 + BN and DW3x3 + BN summed, SiLU), not yet fused;
- a plain `nn.Conv2d` 1x1 (bias optional), as the last layer only (the cls head's end).
`residual=True` adds x to the result (the CIB shortcut).

Semantics equal the reference modules in train mode: each BN normalises with the batch mean and biased variance
and its eps; running_mean/running_var (unbiased) and num_batches_tracked are updated in place exactly as
nn.BatchNorm2d does (momentum, or the cumulative average when momentum is None). A BN in eval mode that tracks
running statistics normalises with them, as the reference does (a frozen BN inside a training model).

How it runs: every conv writes its raw output and per-channel batch statistics (merged partial Welford
statistics); BN scale/shift are per-channel torch ops on those statistics, and the next conv applies BN + act to
its input tiles on the fly (its prologue). The last conv of a chain runs twice over its input: a statistics-only
pass, then a pass whose epilogue writes act(BN(y)) (+ x) directly, so its raw output never exists. A RepVGGDW
computes the statistics of both branches (statistics-only passes), then one 7x7 depthwise conv with the
BN-scaled, summed weights (w7 * s7 + pad(w3 * s3)) gives the pre-activation, as exact in train mode as the
two-branch form. Backward recomputes activations from the saved raw tensors: what is saved for backward is the
chain input, the raw outputs that feed a later conv, and per-channel vectors (see tests/test_conv_chain.py for
the measured ratio to the reference modules)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._train_common import check_device, check_tensor, stat_dtype
from .dwconv import dw_conv_bn
from .pwconv import pw_conv_bn

__all__ = ["conv_chain_train", "parse_chain"]


class _Spec:
    __slots__ = ("kind", "index", "weight", "weight2", "bn", "bn2", "act", "stride", "bias", "cin", "cout")

    def __init__(self, kind, index, weight, bn=None, act=False, stride=1, weight2=None, bn2=None, bias=None):
        self.kind, self.index, self.weight, self.bn, self.act, self.stride = kind, index, weight, bn, act, stride
        self.weight2, self.bn2, self.bias = weight2, bn2, bias
        self.cin = weight.shape[1] * (weight.shape[0] if kind in ("dw", "repvgg") else 1)
        self.cout = weight.shape[0]


def _flatten(layers):
    out = []
    for m in layers:
        if isinstance(m, nn.Sequential):
            out.extend(_flatten(m))
        else:
            out.append(m)
    return out


def _act_flag(act, where):
    if isinstance(act, nn.SiLU):
        return True
    if isinstance(act, nn.Identity):
        return False
    raise ValueError(f"{where}: only SiLU and Identity activations are supported, got {type(act).__name__}")


def _conv_spec(m, i, kind_hint=None):
    """_Spec for a yolov10.modules.Conv (conv + bn + act)."""
    where = f"layers[{i}] ({type(m).__name__})"
    conv = getattr(m, "conv", None)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{where}: expected a Conv with a .conv nn.Conv2d")
    if not hasattr(m, "bn"):
        raise ValueError(f"{where}: its BN is fused into the conv (fuse_bn() was called): the training path needs "
                         f"the unfused module")
    if conv.bias is not None:
        raise ValueError(f"{where}: a Conv's nn.Conv2d must have no bias")
    if not isinstance(m.bn, nn.BatchNorm2d):
        raise ValueError(f"{where}: .bn must be an nn.BatchNorm2d")
    k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding, conv.dilation
    if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1] or d != (1, 1) \
            or p != (k // 2, k // 2) or conv.padding_mode != "zeros":
        raise ValueError(f"{where}: needs a square kernel, equal strides, dilation 1 and zero padding k // 2; got "
                         f"kernel {conv.kernel_size}, stride {conv.stride}, padding {p}, dilation {d}")
    act = _act_flag(m.act, where)
    if conv.groups == conv.in_channels == conv.out_channels and k in (3, 5, 7):
        if s not in (1, 2):
            raise ValueError(f"{where}: depthwise stride must be 1 or 2, got {s}")
        return _Spec("dw", i, conv.weight, m.bn, act, s)
    if k == 1 and conv.groups == 1:
        if s != 1:
            raise ValueError(f"{where}: pointwise convs must have stride 1, got {s}")
        return _Spec("pw", i, conv.weight, m.bn, act, 1)
    raise ValueError(f"{where}: only depthwise (groups == channels, k in 3/5/7) and pointwise (1x1, groups 1) convs "
                     f"are supported; got k={k}, groups={conv.groups}, channels {conv.in_channels}->{conv.out_channels}")


def parse_chain(layers):
    """Validate `layers` and describe each as a _Spec (kind dw / pw / repvgg / final)."""
    from yolov10.modules import Conv, RepVGGDW
    mods = _flatten(layers)
    if not mods:
        raise ValueError("layers is empty")
    specs = []
    for i, m in enumerate(mods):
        if isinstance(m, RepVGGDW):
            if not hasattr(m, "conv1"):
                raise ValueError(f"layers[{i}] (RepVGGDW) is fused (fuse() was called): the training path needs "
                                 f"the two-branch module")
            big, small = _conv_spec(m.conv, i), _conv_spec(m.conv1, i)
            if big.kind != "dw" or small.kind != "dw" or big.act or small.act or big.stride != 1 or small.stride != 1 \
                    or big.weight.shape[-1] < small.weight.shape[-1]:
                raise ValueError(f"layers[{i}] (RepVGGDW): expected a large and a small stride-1 depthwise Conv "
                                 f"without activation")
            specs.append(_Spec("repvgg", i, big.weight, big.bn, _act_flag(m.act, f"layers[{i}]"), 1,
                               weight2=small.weight, bn2=small.bn))
        elif isinstance(m, Conv):
            specs.append(_conv_spec(m, i))
        elif isinstance(m, nn.Conv2d):
            if i != len(mods) - 1:
                raise ValueError(f"layers[{i}]: a plain nn.Conv2d is supported only as the last layer")
            if m.kernel_size != (1, 1) or m.stride != (1, 1) or m.groups != 1 or m.padding != (0, 0):
                raise ValueError(f"layers[{i}]: the final plain nn.Conv2d must be 1x1, stride 1, groups 1, no padding")
            specs.append(_Spec("final", i, m.weight, bias=m.bias))
        else:
            raise ValueError(f"layers[{i}]: unsupported module {type(m).__name__} (expected yolov10 Conv, RepVGGDW, "
                             f"or a final 1x1 nn.Conv2d)")
    for a, b in zip(specs, specs[1:]):
        if a.cout != b.cin:
            raise ValueError(f"layers[{b.index}] expects {b.cin} input channels but layers[{a.index}] gives {a.cout}")
    return specs


def _batch_norm(mean, var, bn, count):
    """Per-channel (scale, shift) of BN given the batch statistics (differentiable), and the running-stat update
    exactly as nn.BatchNorm2d in train mode. In eval mode, the running statistics."""
    sd = mean.dtype
    C = bn.num_features
    gamma = bn.weight.to(sd) if bn.weight is not None else torch.ones(C, dtype=sd, device=mean.device)
    beta = bn.bias.to(sd) if bn.bias is not None else torch.zeros(C, dtype=sd, device=mean.device)
    rstd = torch.rsqrt(var + bn.eps)
    scale = gamma * rstd
    shift = beta - mean * scale
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            unbiased = var.detach() * (count / (count - 1))
            rm, rv = bn.running_mean, bn.running_var
            if bn.momentum is None:  # cumulative average; a tensor factor keeps torch.compile graphs whole
                f = 1.0 / bn.num_batches_tracked.to(sd)
                rm.copy_((rm.to(sd) * (1.0 - f) + mean.detach() * f).to(rm.dtype))
                rv.copy_((rv.to(sd) * (1.0 - f) + unbiased * f).to(rv.dtype))
            else:
                f = bn.momentum
                rm.mul_(1.0 - f).add_(mean.detach().to(rm.dtype), alpha=f)
                rv.mul_(1.0 - f).add_(unbiased.to(rv.dtype), alpha=f)
    return scale, shift


def _uses_batch_stats(bn):
    return bn.training or not bn.track_running_stats or bn.running_mean is None


def _eval_affine(bn, sd, device):
    C = bn.num_features
    gamma = bn.weight.to(sd) if bn.weight is not None else torch.ones(C, dtype=sd, device=device)
    beta = bn.bias.to(sd) if bn.bias is not None else torch.zeros(C, dtype=sd, device=device)
    scale = gamma * torch.rsqrt(bn.running_var.to(sd) + bn.eps)
    return scale, beta - bn.running_mean.to(sd) * scale


def _out_hw(h, w, spec):
    if spec.kind == "dw" and spec.stride == 2:
        k = spec.weight.shape[-1]
        return (h + 2 * (k // 2) - k) // 2 + 1, (w + 2 * (k // 2) - k) // 2 + 1
    return h, w


def conv_chain_train(x, layers, residual=False):
    """Fused train-mode forward of `layers` on x (see the module docstring); differentiable in x and every
    conv weight, BN gamma/beta and the final conv's bias; updates the BN running statistics in place."""
    check_tensor("x", x, dim=4)
    check_device(x)
    specs = parse_chain(layers)
    for s in specs:
        for name, p in (("weight", s.weight), ("weight", s.weight2), ("bias", s.bias)):
            if p is not None and p.device != x.device:
                raise ValueError(f"layers[{s.index}] {name} is on {p.device} but x is on {x.device}: all tensors must "
                                 f"be on one device")
            if p is not None and not p.dtype.is_floating_point:
                raise TypeError(f"layers[{s.index}] {name} must be floating point, got {p.dtype}")
    if x.shape[1] != specs[0].cin:
        raise ValueError(f"x has {x.shape[1]} channels but layers[{specs[0].index}] expects {specs[0].cin}")
    N, _, H, W = x.shape
    for s in specs:
        H, W = _out_hw(H, W, s)
        if s.bn is not None and _uses_batch_stats(s.bn) and N * H * W <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)} "
                             f"(batch statistics over {N * H * W} value at layers[{s.index}])")
    if residual and (specs[-1].cout != x.shape[1] or (H, W) != tuple(x.shape[2:])):
        raise ValueError(f"residual=True needs the chain's output shape {(x.shape[0], specs[-1].cout, H, W)} to equal "
                         f"x's {tuple(x.shape)}")
    res = x if residual else None
    sd = stat_dtype(x)

    cur = x
    pro_s = pro_t = None  # BN affine of cur (None: cur is already an activation)
    pro_act = False
    h, w = x.shape[2:]
    for i, s in enumerate(specs):
        last = i == len(specs) - 1
        h, w = _out_hw(h, w, s)
        count = x.shape[0] * h * w
        if s.kind == "final":
            y, _, _ = pw_conv_bn(cur, s.weight, pro_s, pro_t, s.bias, pro_act, False)
            return y + res if res is not None else y
        if s.kind == "pw":
            if _uses_batch_stats(s.bn):
                y, mean, var = pw_conv_bn(cur, s.weight, pro_s, pro_t, None, pro_act, True)
                scale, shift = _batch_norm(mean, var, s.bn, count)
            else:
                y, _, _ = pw_conv_bn(cur, s.weight, pro_s, pro_t, None, pro_act, False)
                scale, shift = _eval_affine(s.bn, sd, x.device)
            if last:  # a chain ending in a pointwise conv: BN + act in torch (not a YOLOv10 chain)
                out = y * scale.to(y.dtype).view(1, -1, 1, 1) + shift.to(y.dtype).view(1, -1, 1, 1)
                out = F.silu(out) if s.act else out
                return out + res if res is not None else out
            cur, pro_s, pro_t, pro_act = y, scale, shift, s.act
            continue
        if s.kind == "dw":
            wgt, stride = s.weight, s.stride
            if _uses_batch_stats(s.bn):
                if last:  # statistics-only pass; the epilogue pass below writes act(BN(y)) (+ x)
                    _, mean, var = dw_conv_bn(cur, wgt, pro_s, pro_t, None, None, None, stride, pro_act, False,
                                              False, True)
                    scale, shift = _batch_norm(mean, var, s.bn, count)
                else:
                    y, mean, var = dw_conv_bn(cur, wgt, pro_s, pro_t, None, None, None, stride, pro_act, False,
                                              True, True)
                    scale, shift = _batch_norm(mean, var, s.bn, count)
                    cur, pro_s, pro_t, pro_act = y, scale, shift, s.act
                    continue
            else:
                scale, shift = _eval_affine(s.bn, sd, x.device)
                if not last:
                    y, _, _ = dw_conv_bn(cur, wgt, pro_s, pro_t, None, None, None, stride, pro_act, False, True, False)
                    cur, pro_s, pro_t, pro_act = y, scale, shift, s.act
                    continue
            out, _, _ = dw_conv_bn(cur, wgt, pro_s, pro_t, scale, shift, res, stride, pro_act, s.act, True, False)
            return out
        # repvgg: BN statistics of both branches, then one large depthwise conv with the BN-scaled summed weights
        scales, shifts = [], []
        for wgt, bn in ((s.weight, s.bn), (s.weight2, s.bn2)):
            if _uses_batch_stats(bn):
                _, mean, var = dw_conv_bn(cur, wgt, pro_s, pro_t, None, None, None, 1, pro_act, False, False, True)
                sc, sh = _batch_norm(mean, var, bn, count)
            else:
                sc, sh = _eval_affine(bn, sd, x.device)
            scales.append(sc)
            shifts.append(sh)
        pad = (s.weight.shape[-1] - s.weight2.shape[-1]) // 2
        wc = s.weight.to(sd) * scales[0].view(-1, 1, 1, 1) + F.pad(s.weight2.to(sd) * scales[1].view(-1, 1, 1, 1),
                                                                    [pad] * 4)
        bias = shifts[0] + shifts[1]
        ones = torch.ones_like(bias)
        if last:
            out, _, _ = dw_conv_bn(cur, wc, pro_s, pro_t, ones, bias, res, 1, pro_act, s.act, True, False)
            return out
        z, _, _ = dw_conv_bn(cur, wc, pro_s, pro_t, None, None, None, 1, pro_act, False, True, False)
        cur, pro_s, pro_t, pro_act = z, ones, bias, s.act
    raise AssertionError("unreachable")
