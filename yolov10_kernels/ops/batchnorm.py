"""BatchNorm as the kernels consume it: a per-channel (scale, shift) with bn(y) == y * scale + shift.

Every op that fuses a BN (the chain ops, PSA attention, the eval-mode fold of the drop-ins) gets it here, from
the running statistics (eval) or from batch statistics (train), and train mode updates the running statistics
exactly as nn.BatchNorm2d does. A BN is anything with nn.BatchNorm2d's attribute names: the module itself (what
the drop-ins pass, so mode, hyper-parameters and buffers are the live ones), or a `BatchNormSpec` (its tensors and
hyper-parameters as plain values, for callers that hold tensors rather than modules)."""
import struct
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .utils import acc_dtype, channel_block, check_device, empty, on_device, op_name, tl, tl_acc, triton

Tensor = torch.Tensor


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


# ------------------------------------------------------------------------------------------------ the affine op
# Per layer, a training step needs: the batch statistics turned into (scale, shift), the running statistics
# updated, and in backward the gradients of mean, var, gamma and beta. As torch ops that is ~30 host ops per BN
# layer (more than the eager layer's whole forward and backward); here it is one launch each way.
if triton is not None:
    @triton.jit
    def _bn_affine_kernel(mean_ptr, var_ptr, w_ptr, b_ptr, rm_ptr, rv_ptr, nbt_ptr, scale_ptr, shift_ptr,
                          C, count, count_lo, eps, eps_lo, momentum, momentum_lo,
                          HAS_W: tl.constexpr, HAS_B: tl.constexpr, UPDATE: tl.constexpr, HAS_NBT: tl.constexpr,
                          CUMULATIVE: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
        # one program: the cumulative average's factor reads num_batches_tracked before it is incremented
        zero = tl.zeros([BLOCK_C], ACC)  # fp32 scalars join an ACC vector first: exact hi + lo in fp64
        count = zero + count + count_lo
        eps = zero + eps + eps_lo
        f = zero + momentum + momentum_lo
        if CUMULATIVE:
            f = zero
            if HAS_NBT:
                f = 1.0 / (zero + tl.load(nbt_ptr).to(ACC) + 1.0)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            m = c < C
            mu = tl.load(mean_ptr + c, mask=m, other=0.0).to(ACC)
            var = tl.load(var_ptr + c, mask=m, other=1.0).to(ACC)
            gamma = tl.load(w_ptr + c, mask=m, other=1.0).to(ACC) if HAS_W else tl.full([BLOCK_C], 1.0, ACC)
            beta = tl.load(b_ptr + c, mask=m, other=0.0).to(ACC) if HAS_B else tl.zeros([BLOCK_C], ACC)
            scale = gamma / tl.sqrt(var + eps)
            tl.store(scale_ptr + c, scale, mask=m)
            tl.store(shift_ptr + c, beta - mu * scale, mask=m)
            if UPDATE:
                rm = tl.load(rm_ptr + c, mask=m, other=0.0).to(ACC)
                rv = tl.load(rv_ptr + c, mask=m, other=0.0).to(ACC)
                unbiased = var * (count / (count - 1.0))
                tl.store(rm_ptr + c, (rm * (1.0 - f) + mu * f).to(rm_ptr.dtype.element_ty), mask=m)
                tl.store(rv_ptr + c, (rv * (1.0 - f) + unbiased * f).to(rv_ptr.dtype.element_ty), mask=m)
        if UPDATE and HAS_NBT:
            tl.store(nbt_ptr, tl.load(nbt_ptr) + 1)

    @triton.jit
    def _bn_affine_bwd_kernel(gs_ptr, gt_ptr, mean_ptr, var_ptr, w_ptr, gmean_ptr, gvar_ptr, gw_ptr, gb_ptr,
                              C, eps, eps_lo, HAS_GS: tl.constexpr, HAS_GT: tl.constexpr, HAS_W: tl.constexpr,
                              HAS_B: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
        """scale = gamma r, shift = beta - mean scale, r = (var + eps)^-1/2: the chain rule per channel."""
        c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        m = c < C
        gs = tl.load(gs_ptr + c, mask=m, other=0.0).to(ACC) if HAS_GS else tl.zeros([BLOCK_C], ACC)
        gt = tl.load(gt_ptr + c, mask=m, other=0.0).to(ACC) if HAS_GT else tl.zeros([BLOCK_C], ACC)
        mu = tl.load(mean_ptr + c, mask=m, other=0.0).to(ACC)
        r = 1.0 / tl.sqrt(tl.load(var_ptr + c, mask=m, other=1.0).to(ACC) + eps + eps_lo)
        gamma = tl.load(w_ptr + c, mask=m, other=1.0).to(ACC) if HAS_W else tl.full([BLOCK_C], 1.0, ACC)
        q = gs - mu * gt  # d loss / d scale, all paths
        tl.store(gmean_ptr + c, -gamma * r * gt, mask=m)
        tl.store(gvar_ptr + c, q * gamma * (-0.5 * r * r * r), mask=m)
        if HAS_W:
            tl.store(gw_ptr + c, (q * r).to(gw_ptr.dtype.element_ty), mask=m)
        if HAS_B:
            tl.store(gb_ptr + c, gt.to(gb_ptr.dtype.element_ty), mask=m)


def _split(v):
    """A float as fp32 (hi, lo) with hi + lo == v to ~1e-15: Triton passes Python floats as fp32 scalars, and the
    fp64 path (gradcheck, the tests' exact running statistics) needs the rest."""
    v = float(v)
    hi = struct.unpack("f", struct.pack("f", v))[0]
    return hi, v - hi


def bn_affine_impl(mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   running_mean: Optional[Tensor], running_var: Optional[Tensor],
                   num_batches_tracked: Optional[Tensor], count: float, eps: float, momentum: Optional[float],
                   update: bool) -> tuple[Tensor, Tensor]:
    """bn_affine's implementation, which other ops' implementations call (a nested op call would dispatch again)."""
    check_device(mean)
    C = mean.shape[0]
    scale, shift = empty(C, mean), empty(C, mean)
    if C == 0:
        return scale, shift
    update = update and running_mean is not None
    dummy = mean
    with on_device(mean):
        _bn_affine_kernel[(1,)](mean, var, weight if weight is not None else dummy,
                                bias if bias is not None else dummy, running_mean if update else dummy,
                                running_var if update else dummy,
                                num_batches_tracked if num_batches_tracked is not None else dummy, scale, shift,
                                C, *_split(count), *_split(eps), *_split(0.0 if momentum is None else momentum),
                                HAS_W=weight is not None, HAS_B=bias is not None, UPDATE=update,
                                HAS_NBT=update and num_batches_tracked is not None, CUMULATIVE=momentum is None,
                                ACC=tl_acc(mean.dtype), BLOCK_C=channel_block(C, 256, 1024))
    return scale, shift


@torch.library.custom_op(op_name("bn_affine"), mutates_args=("running_mean", "running_var", "num_batches_tracked"))
def bn_affine(mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
              running_mean: Optional[Tensor], running_var: Optional[Tensor], num_batches_tracked: Optional[Tensor],
              count: float, eps: float, momentum: Optional[float], update: bool) -> tuple[Tensor, Tensor]:
    """(scale, shift) of a BN normalising with (mean, biased var), in their dtype: scale = weight / sqrt(var + eps),
    shift = bias - mean * scale; with `update`, the running statistics (unbiased variance over `count` values) and
    num_batches_tracked updated in place exactly as nn.BatchNorm2d does (momentum, or the cumulative average when
    momentum is None). One launch. No autograd of its own (it mutates): batch_scale_shift differentiates it.

    Arguments:
        mean, var: (C,) batch mean and biased variance, the accumulation dtype (fp32, fp64 for fp64 inputs); on a
            CUDA device, or on the CPU only under TRITON_INTERPRET=1.
        weight, bias: (C,) the BN's gamma / beta, any float dtype, mean's device. None: 1 / 0.
        running_mean, running_var: (C,) updated in place (their dtype kept) when `update`. running_mean None: no
            update.
        num_batches_tracked: () int64 counter, incremented when updating; None: not counted (with momentum None
            the running statistics then stay as they are).
        count: the number of values per channel behind (mean, var) (for the unbiased variance).
        eps: the BN's eps. momentum: its momentum; None: the cumulative moving average.
        update: update the running statistics (training mode).

    Returns:
        scale, shift: (C,) in mean's dtype.

    Raises:
        RuntimeError: Triton cannot be imported; a CPU mean without TRITON_INTERPRET=1, a CUDA mean with it, or
            another device type (utils.check_device). No other checks.
    """
    return bn_affine_impl(mean, var, weight, bias, running_mean, running_var, num_batches_tracked, count, eps, momentum,
                          update)


@bn_affine.register_fake
def _bn_affine_fake(mean, var, weight, bias, running_mean, running_var, num_batches_tracked, count, eps, momentum,
                    update):
    return torch.empty_like(mean), torch.empty_like(mean)


def bn_affine_backward_impl(grad_scale: Optional[Tensor], grad_shift: Optional[Tensor], mean: Tensor, var: Tensor,
                            weight: Optional[Tensor], has_bias: bool, bias_dtype: torch.dtype, eps: float
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """bn_affine_backward's implementation, which other ops' implementations call (a nested op call would
    dispatch again)."""
    check_device(mean)
    C = mean.shape[0]
    g_mean, g_var = empty(C, mean), empty(C, mean)
    g_w = mean.new_empty(C if weight is not None else 0, dtype=weight.dtype if weight is not None else mean.dtype)
    g_b = mean.new_empty(C if has_bias else 0, dtype=bias_dtype)
    if not C:
        return g_mean, g_var, g_w, g_b
    block = channel_block(C, 256, 1024)
    with on_device(mean):
        _bn_affine_bwd_kernel[(triton.cdiv(C, block),)](
            grad_scale if grad_scale is not None else mean, grad_shift if grad_shift is not None else mean, mean, var,
            weight if weight is not None else mean, g_mean, g_var, g_w if weight is not None else mean,
            g_b if has_bias else mean, C, *_split(eps), HAS_GS=grad_scale is not None, HAS_GT=grad_shift is not None,
            HAS_W=weight is not None, HAS_B=has_bias, ACC=tl_acc(mean.dtype), BLOCK_C=block)
    return g_mean, g_var, g_w, g_b


@torch.library.custom_op(op_name("bn_affine_backward"), mutates_args=())
def bn_affine_backward(grad_scale: Optional[Tensor], grad_shift: Optional[Tensor], mean: Tensor, var: Tensor,
                       weight: Optional[Tensor], has_bias: bool, bias_dtype: torch.dtype, eps: float
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The backward of bn_affine: (grad mean, grad var, grad weight, grad bias); the last two empty when the BN has
    no such parameter. With r = (var + eps)^-1/2 and q = grad_scale - mean * grad_shift: grad mean = -weight r
    grad_shift, grad var = -q weight r^3 / 2, grad weight = q r, grad bias = grad_shift. One launch.

    Arguments:
        grad_scale, grad_shift: (C,) gradients reaching scale / shift, mean's dtype and device; None: zero.
        mean, var: (C,) the forward's batch statistics, the accumulation dtype (fp32, fp64 for fp64 inputs); on a
            CUDA device, or on the CPU only under TRITON_INTERPRET=1.
        weight: (C,) the BN's gamma, mean's device; None: no weight (1).
        has_bias, bias_dtype: whether the BN has a bias, and its dtype. eps: the BN's eps.

    Returns:
        grad mean, grad var: (C,) in mean's dtype.
        grad weight: (C,) in weight's dtype; (0,) without a weight. grad bias: (C,) in bias_dtype; (0,) without.

    Raises:
        RuntimeError: Triton cannot be imported; a CPU mean without TRITON_INTERPRET=1, a CUDA mean with it, or
            another device type (utils.check_device). No other checks.
    """
    return bn_affine_backward_impl(grad_scale, grad_shift, mean, var, weight, has_bias, bias_dtype, eps)


@bn_affine_backward.register_fake
def _bn_affine_backward_fake(grad_scale, grad_shift, mean, var, weight, has_bias, bias_dtype, eps):
    C = mean.shape[0]
    return (torch.empty_like(mean), torch.empty_like(mean),
            mean.new_empty(C if weight is not None else 0, dtype=weight.dtype if weight is not None else mean.dtype),
            mean.new_empty(C if has_bias else 0, dtype=bias_dtype))


class _BnAffine(torch.autograd.Function):
    """Autograd of bn_affine (a custom op that mutates the running statistics cannot register its own)."""

    @staticmethod
    def forward(ctx, mean, var, weight, bias, running_mean, running_var, num_batches_tracked, count, eps, momentum,
                update):
        ctx.save_for_backward(mean, var, weight)
        ctx.cfg = (bias is not None, bias.dtype if bias is not None else mean.dtype, eps)
        return bn_affine(mean, var, weight, bias, running_mean, running_var, num_batches_tracked, count, eps,
                         momentum, update)

    @staticmethod
    def backward(ctx, grad_scale, grad_shift):
        mean, var, weight = ctx.saved_tensors
        has_bias, bias_dtype, eps = ctx.cfg
        g_mean, g_var, g_w, g_b = bn_affine_backward(grad_scale, grad_shift, mean, var, weight, has_bias, bias_dtype,
                                                     eps)
        return (g_mean, g_var, g_w if weight is not None else None, g_b if has_bias else None,
                None, None, None, None, None, None, None)


def batch_scale_shift(bn, mean, var, count, training):
    """(scale, shift) from batch statistics (mean, biased var over `count` values; differentiable); in training
    the running statistics are updated as nn.BatchNorm2d does. One bn_affine launch."""
    return _BnAffine.apply(mean, var, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.num_batches_tracked,
                           float(count), float(bn.eps), bn.momentum, bool(training))


def running_scale_shift(bn, dtype):
    """(scale, shift) from the running statistics, in `dtype` (differentiable in weight and bias): eval mode, a
    frozen BN inside a training model, and the fold into a conv."""
    return _affine(bn, bn.running_mean.to(dtype), bn.running_var.to(dtype))


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
