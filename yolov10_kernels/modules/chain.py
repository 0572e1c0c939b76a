"""The one reader of reference layers: a chain of Conv / RepVGGDW / nn.Conv2d layers -> op specs
(`ConvSpec`), shared by the eval path (`fold_chain`: BN folded into the weights the eval kernels read) and the
train path (`ops.chain_train.chain_train` takes the specs as they are). A drop-in reads its chain once and keeps
the specs (modules/dropin.py), so they hold the layers' live state: the conv weights (Parameters, which
.to()/.half() convert in place) and the nn.BatchNorm2d modules themselves (a BN as ops/batchnorm.py takes it),
whose mode, eps, momentum and running-statistics buffers (replaced by .to()) are read when the op runs.

Layers are recognised by structure, not by class, so the official (ultralytics) modules read the same:
- a Conv: `.conv` an nn.Conv2d, `.bn` an nn.BatchNorm2d (absent once folded by fuse_bn()), `.act` (SiLU or
  Identity). A re-parameterised RepVGGDW (`.conv` a biased nn.Conv2d, `.act`, no `.conv1`) reads the same;
- a RepVGGDW: `.conv` and `.conv1` Convs (large and small depthwise, no activation) and `.act`;
- a plain nn.Conv2d 1x1, as the last layer only (the cls head's end).
This is the only module that reads layer internals."""
import torch.nn as nn
import torch.nn.functional as F

from ..ops.batchnorm import fold_into_conv
from ..ops.folded import FoldedChain, FoldedLayer
from ..ops.chain_train import ConvSpec


def flatten(layers):
    """The layers of a list, tuple or nn.Sequential, nested Sequentials flattened."""
    out = []
    for m in layers:
        out.extend(flatten(m) if isinstance(m, nn.Sequential) else [m])
    return out


def _act_flag(act, where):
    if isinstance(act, nn.SiLU):
        return True
    if isinstance(act, nn.Identity):
        return False
    raise ValueError(f"{where}: only SiLU and Identity activations are supported, got {type(act).__name__}")


def _is_conv(m):
    return isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "act", None), nn.Module)


def _is_repvggdw(m):
    return _is_conv(getattr(m, "conv", None)) and _is_conv(getattr(m, "conv1", None)) and hasattr(m, "act")


def _conv2d_kind(conv, where):
    """("dw" or "pw", stride) of an nn.Conv2d the kernels implement: square kernel, equal strides, dilation 1,
    zero padding k // 2; depthwise (groups == channels, odd k) or pointwise (1x1, groups 1, stride 1)."""
    k, s = conv.kernel_size, conv.stride
    if k[0] != k[1] or s[0] != s[1] or conv.dilation != (1, 1) or conv.padding != (k[0] // 2, k[1] // 2) \
            or conv.padding_mode != "zeros":
        raise ValueError(f"{where}: needs a square kernel, equal strides, dilation 1 and zero padding k // 2; got "
                         f"kernel {k}, stride {s}, padding {conv.padding}, dilation {conv.dilation}")
    if k[0] == 1 and conv.groups == 1:
        if s[0] != 1:
            raise ValueError(f"{where}: pointwise convs must have stride 1, got {s[0]}")
        return "pw", 1
    if conv.groups == conv.in_channels == conv.out_channels and k[0] % 2 == 1:
        return "dw", s[0]
    raise ValueError(f"{where}: only depthwise (groups == channels, odd k) and pointwise (1x1, groups 1) convs are "
                     f"supported; got k={k[0]}, groups={conv.groups}, channels {conv.in_channels}->{conv.out_channels}")


def _conv_spec(m, where):
    kind, stride = _conv2d_kind(m.conv, where)
    bn = getattr(m, "bn", None)
    if bn is not None and not isinstance(bn, nn.BatchNorm2d):
        raise ValueError(f"{where}: .bn must be an nn.BatchNorm2d, got {type(bn).__name__}")
    if bn is not None and m.conv.bias is not None:
        raise ValueError(f"{where}: a conv followed by a BN must have no bias")
    return ConvSpec(kind, m.conv.weight, bn, _act_flag(m.act, where), stride, bias=m.conv.bias)


def _repvggdw_spec(m, where):
    big, small = _conv_spec(m.conv, where), _conv_spec(m.conv1, where)
    if big.kind != "dw" or small.kind != "dw" or big.act or small.act or big.stride != 1 or small.stride != 1 \
            or big.weight.shape[-1] < small.weight.shape[-1]:
        raise ValueError(f"{where}: expected a large and a small stride-1 depthwise Conv without activation")
    return ConvSpec("repvgg", big.weight, big.bn, _act_flag(m.act, where), 1, weight2=small.weight, bn2=small.bn,
                    bias=big.bias, bias2=small.bias)


def read_chain(layers):
    """ConvSpecs of `layers` (a list, tuple or nn.Sequential); ValueError naming the layer that does not fit."""
    mods = flatten(layers)
    specs = []
    for i, m in enumerate(mods):
        where = f"layers[{i}] ({type(m).__name__})"
        if _is_repvggdw(m):
            specs.append(_repvggdw_spec(m, where))
        elif _is_conv(m):
            specs.append(_conv_spec(m, where))
        elif isinstance(m, nn.Conv2d):
            if i != len(mods) - 1 or _conv2d_kind(m, where)[0] != "pw":
                raise ValueError(f"{where}: a plain nn.Conv2d is supported only as the last layer, 1x1, groups 1")
            specs.append(ConvSpec("final", m.weight, bias=m.bias))
        else:
            raise ValueError(f"{where}: unsupported module (expected a Conv, a RepVGGDW or a final 1x1 nn.Conv2d)")
    return specs


def _foldable(bn):
    return bn is None or bn.running_mean is not None


def read_supported(layers, kinds):
    """The specs of `layers` when they are the chain `kinds` (each "dw", "pw", "repvgg", "final" or alternatives
    joined by "|") with BNs that fold (running statistics), else None."""
    try:
        specs = read_chain(layers)
    except ValueError:
        return None
    if len(specs) != len(kinds) or any(s.kind not in k.split("|") for s, k in zip(specs, kinds)):
        return None
    return specs if all(_foldable(s.bn) and _foldable(s.bn2) for s in specs) else None


def fold_layer(s):
    """A ConvSpec with its BN folded (running statistics) -> FoldedLayer in the eval kernels' layout."""
    w, b = fold_into_conv(s.weight, s.bias, s.bn)
    if s.kind == "repvgg":  # re-parameterised to one depthwise conv: large + zero-padded small
        w1, b1 = fold_into_conv(s.weight2, s.bias2, s.bn2)
        p = (w.shape[-1] - w1.shape[-1]) // 2
        w, b = w + F.pad(w1, [p, p, p, p]), b + b1
    if s.kind in ("dw", "repvgg"):
        c, k = w.shape[0], w.shape[-1]
        return FoldedLayer(w.reshape(c, k * k).t().contiguous(), b.contiguous(), s.act, s.stride)
    return FoldedLayer(w.reshape(w.shape[0], w.shape[1]).t().contiguous(), b.contiguous(), s.act)


def fold_chain(specs, residual=False):
    return FoldedChain([fold_layer(s) for s in specs], residual=residual)
