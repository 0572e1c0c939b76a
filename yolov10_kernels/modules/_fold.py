"""BN folding for the inference kernels: eval-mode Conv/BN/RepVGGDW layers -> (weight, bias) in the layouts
the kernels read, computed from the running statistics exactly as model.fuse() would, without touching the
reference modules. `FoldCache` keeps the folded weights until a parameter or buffer changes."""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from yolov10.modules import Conv, RepVGGDW


@dataclass
class FoldedLayer:
    w: torch.Tensor  # depthwise: (k*k, C); pointwise: (C_in, C_out); both contiguous, fp32 (fp64)
    b: torch.Tensor  # (C_out,)
    act: bool  # SiLU after this layer
    stride: int = 1


@dataclass
class FoldedChain:
    layers: list
    residual: bool = False


def _acc_dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _conv2d_and_bn(m):
    if isinstance(m, Conv):
        return m.conv, getattr(m, "bn", None)
    if isinstance(m, nn.Conv2d):
        return m, None
    raise TypeError(f"cannot fold {type(m).__name__}")


def conv_bn_weight_bias(m):
    """(weight (O, I/g, k, k), bias (O,)) of Conv (BN folded with running stats; also after fuse_bn()) or a
    plain nn.Conv2d, in fp32 (fp64 for fp64 modules). Same arithmetic as yolov10.modules.fuse_conv_and_bn."""
    conv, bn = _conv2d_and_bn(m)
    dt = _acc_dtype(conv.weight)
    w = conv.weight.detach().to(dt)
    b = conv.bias.detach().to(dt) if conv.bias is not None else torch.zeros(w.shape[0], dtype=dt, device=w.device)
    if bn is not None:
        gamma = bn.weight.detach().to(dt) if bn.weight is not None else torch.ones_like(b)
        beta = bn.bias.detach().to(dt) if bn.bias is not None else torch.zeros_like(b)
        scale = gamma / torch.sqrt(bn.running_var.detach().to(dt) + bn.eps)
        w = w * scale.view(-1, 1, 1, 1)
        b = beta - bn.running_mean.detach().to(dt) * scale + b * scale
    return w, b


def repvggdw_weight_bias(m):
    """RepVGGDW re-parameterised to one depthwise conv: 7x7 (BN folded) + zero-padded 3x3 (BN folded)."""
    w, b = conv_bn_weight_bias(m.conv)
    if hasattr(m, "conv1"):
        w1, b1 = conv_bn_weight_bias(m.conv1)
        p = (w.shape[-1] - w1.shape[-1]) // 2
        w = w + F.pad(w1, [p, p, p, p])
        b = b + b1
    return w, b


def _act_flag(act):
    if isinstance(act, nn.SiLU):
        return True
    if isinstance(act, nn.Identity):
        return False
    raise TypeError(f"unsupported activation {type(act).__name__}")


def fold_dw(m):
    """Depthwise Conv / RepVGGDW -> FoldedLayer with w laid out (k*k, C)."""
    if isinstance(m, RepVGGDW):
        w, b = repvggdw_weight_bias(m)
        act, conv = True, (m.conv if isinstance(m.conv, nn.Conv2d) else m.conv.conv)
    else:
        w, b = conv_bn_weight_bias(m)
        act, conv = _act_flag(m.act) if isinstance(m, Conv) else False, _conv2d_and_bn(m)[0]
    c, k = w.shape[0], w.shape[-1]
    return FoldedLayer(w.reshape(c, k * k).t().contiguous(), b.contiguous(), act, conv.stride[0])


def fold_pw(m):
    """Pointwise Conv / nn.Conv2d (1x1) -> FoldedLayer with w laid out (C_in, C_out)."""
    w, b = conv_bn_weight_bias(m)
    act = _act_flag(m.act) if isinstance(m, Conv) else False
    return FoldedLayer(w.reshape(w.shape[0], w.shape[1]).t().contiguous(), b.contiguous(), act)


# ---- structure checks (swap() only replaces modules the kernels implement exactly) ----
def _check_conv2d(conv, *, depthwise, k=None, stride=1):
    if not isinstance(conv, nn.Conv2d) or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        return False
    kh, kw = conv.kernel_size
    if kh != kw or (k is not None and kh != k) or conv.stride != (stride, stride) or conv.padding != (kh // 2, kw // 2):
        return False
    if depthwise:
        return kh % 2 == 1 and conv.groups == conv.in_channels == conv.out_channels
    return kh == 1 and conv.groups == 1


def _check_bn(bn):
    return bn is None or (isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_mean is not None)


def check_conv(m, *, depthwise, k=None, stride=1, act=None):
    """Is m a yolov10 Conv of the given kind (act: True = SiLU, False = Identity, None = either)?"""
    if not isinstance(m, Conv) or not _check_conv2d(m.conv, depthwise=depthwise, k=k, stride=stride):
        return False
    if not _check_bn(getattr(m, "bn", None)):
        return False
    try:
        a = _act_flag(m.act)
    except TypeError:
        return False
    return act is None or a == act


def check_dw_or_repvgg(m, act=True):
    if isinstance(m, RepVGGDW):
        if not isinstance(m.act, nn.SiLU):
            return False
        if isinstance(m.conv, nn.Conv2d):  # already fused by RepVGGDW.fuse()
            return _check_conv2d(m.conv, depthwise=True) and not hasattr(m, "conv1")
        return (check_conv(m.conv, depthwise=True, act=False) and hasattr(m, "conv1")
                and check_conv(m.conv1, depthwise=True, act=False)
                and m.conv1.conv.kernel_size[0] <= m.conv.conv.kernel_size[0])
    return check_conv(m, depthwise=True, act=act)


# ---- cache ----
class FoldCache:
    """Folded weights, rebuilt when any tracked tensor changes (storage, dtype, device or in-place version:
    optimizer steps, load_state_dict and BN running-stat updates all bump versions). Owners also clear it on
    train()/eval() and on .to()/.half()/... Not used while torch.compile traces (folding is traced instead)."""

    def __init__(self):
        self.key = None
        self.value = None

    def clear(self):
        self.key = self.value = None

    def get(self, tensors, build, extra=()):
        if torch.compiler.is_compiling():
            return build()
        try:
            key = (tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors), tuple(extra))
        except RuntimeError:  # e.g. inference tensors carry no version counter
            return build()
        if key != self.key:
            self.value, self.key = build(), key
        return self.value

    def __getstate__(self):  # never pickled or deep-copied with the module
        return {"key": None, "value": None}

    def __deepcopy__(self, memo):
        return FoldCache()
