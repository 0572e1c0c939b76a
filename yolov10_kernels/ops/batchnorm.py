"""BatchNorm as the kernels consume it: a per-channel (scale, shift) with bn(y) == y * scale + shift.

Every op that fuses a BN (the chain ops, PSA attention, the eval-mode fold of the drop-ins) gets it here, from
the running statistics (eval) or from batch statistics (train), and train mode updates the running statistics
exactly as nn.BatchNorm2d does. A BN is anything with nn.BatchNorm2d's attribute names: the module itself (what
the drop-ins pass, so mode, hyper-parameters and buffers are the live ones), or a `BatchNormSpec` (its tensors and
hyper-parameters as plain values, for callers that hold tensors rather than modules)."""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .utils import acc_dtype


@dataclass
class BatchNormSpec:
    """The state of one nn.BatchNorm2d: tensors shared with the module (running statistics update in place)."""
    weight: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]
    running_mean: Optional[torch.Tensor]  # None: no running statistics (batch statistics in eval too)
    running_var: Optional[torch.Tensor]
    num_batches_tracked: Optional[torch.Tensor]
    eps: float
    momentum: Optional[float]  # None: cumulative moving average
    training: bool

    @classmethod
    def of(cls, bn):
        return cls(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.num_batches_tracked, bn.eps,
                   bn.momentum, bn.training)


def uses_batch_stats(bn, training):
    """nn.BatchNorm2d normalises with batch statistics in training and whenever it has no running ones."""
    return training or bn.running_mean is None


def _affine(bn, mean, var):
    dt, n = mean.dtype, mean.shape[0]
    gamma = bn.weight.to(dt) if bn.weight is not None else torch.ones(n, dtype=dt, device=mean.device)
    beta = bn.bias.to(dt) if bn.bias is not None else torch.zeros(n, dtype=dt, device=mean.device)
    scale = gamma * torch.rsqrt(var + bn.eps)
    return scale, beta - mean * scale


def running_scale_shift(bn, dtype):
    """(scale, shift) from the running statistics, in `dtype`: eval mode, and the fold into a conv."""
    return _affine(bn, bn.running_mean.to(dtype), bn.running_var.to(dtype))


def update_running_stats(bn, mean, var, count):
    """The running-statistics update of nn.BatchNorm2d in train mode, in place: num_batches_tracked + 1, then
    the momentum (or, momentum None, cumulative) average of the batch mean and the unbiased batch variance."""
    if bn.running_mean is None:
        return
    with torch.no_grad():
        dt = mean.dtype
        nbt = bn.num_batches_tracked
        if nbt is not None:
            nbt.add_(1)
        unbiased = var.detach() * (count / (count - 1))
        rm, rv = bn.running_mean, bn.running_var
        if bn.momentum is None:  # a tensor factor keeps torch.compile graphs whole; no counter: no update
            f = 1.0 / nbt.to(dt) if nbt is not None else 0.0
            rm.copy_((rm.to(dt) * (1.0 - f) + mean.detach() * f).to(rm.dtype))
            rv.copy_((rv.to(dt) * (1.0 - f) + unbiased * f).to(rv.dtype))
        else:
            f = bn.momentum
            rm.mul_(1.0 - f).add_(mean.detach().to(rm.dtype), alpha=f)
            rv.mul_(1.0 - f).add_(unbiased.to(rv.dtype), alpha=f)


def batch_scale_shift(bn, mean, var, count, training):
    """(scale, shift) from batch statistics (mean, biased var over `count` values; differentiable); in training
    the running statistics are updated as nn.BatchNorm2d does."""
    if training:
        update_running_stats(bn, mean, var, count)
    return _affine(bn, mean, var)


class _BatchVarMean(torch.autograd.Function):
    """Per-channel (biased var, mean) of x (B, C, H, W) in fp32 (fp64 for fp64 x), as torch.var_mean with
    correction=0 would give for x.float(), but saving x itself for the backward rather than its fp32 copy (a
    low-precision x would otherwise keep a 2x larger copy alive until the backward)."""

    @staticmethod
    def forward(ctx, x):
        var, mean = torch.var_mean(x.to(acc_dtype(x)), dim=(0, 2, 3), correction=0)
        ctx.save_for_backward(x, mean)
        return var, mean

    @staticmethod
    def backward(ctx, dvar, dmean):
        x, mean = ctx.saved_tensors
        n = x.numel() // x.shape[1]
        dvar = torch.zeros_like(mean) if dvar is None else dvar
        dmean = torch.zeros_like(mean) if dmean is None else dmean
        c2 = dvar * (2.0 / n)  # d/dx of var = 2 (x - mean) / n, of mean = 1 / n
        c1 = dmean / n - c2 * mean
        return torch.addcmul(c1.view(1, -1, 1, 1), x, c2.view(1, -1, 1, 1)).to(x.dtype)


def batch_var_mean(x):
    """Per-channel (biased var, mean) of x (B, C, H, W), accumulated in fp32 (fp64), differentiable."""
    return _BatchVarMean.apply(x)


def scale_shift(x, bn, training):
    """(scale, shift) with bn(x) == x * scale + shift, exactly as nn.BatchNorm2d normalises x with `training` as
    its mode (statistics of x itself when they are batch statistics; running statistics updated). In fp32
    (fp64 for fp64 x), differentiable w.r.t. x, bn.weight and bn.bias. bn None (folded into the conv): the
    identity."""
    dt, c = acc_dtype(x), x.shape[1]
    if bn is None:
        return x.new_ones(c, dtype=dt), x.new_zeros(c, dtype=dt)
    if not uses_batch_stats(bn, training):
        return running_scale_shift(bn, dt)
    n = x.numel() // c
    if n <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    var, mean = batch_var_mean(x)
    return batch_scale_shift(bn, mean, var, n, training)


def fold_into_conv(weight, bias, bn):
    """(weight * scale, bias * scale + shift) of a conv followed by bn in eval mode (running statistics), in
    fp32 (fp64 for fp64 weights); bn None: the conv's own weight and bias (zeros when it has none)."""
    dt = acc_dtype(weight)
    w = weight.detach().to(dt)
    b = bias.detach().to(dt) if bias is not None else torch.zeros(w.shape[0], dtype=dt, device=w.device)
    if bn is None:
        return w, b
    with torch.no_grad():
        scale, shift = running_scale_shift(bn, dt)
    return w * scale.view(-1, *([1] * (w.dim() - 1))), shift + b * scale


def batch_norm(x, bn, training):
    """bn(x) as nn.BatchNorm2d.forward computes it, with `training` as its mode (the reference paths)."""
    if bn is None:
        return x
    factor = 0.0 if bn.momentum is None else bn.momentum
    if training and bn.running_mean is not None and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                        uses_batch_stats(bn, training), factor, bn.eps)
