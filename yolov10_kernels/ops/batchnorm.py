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

from .utils import (acc_dtype, channel_block, check_device, empty, empty_4d, finish_stats, is_channels_last,
                    layout_channel_block, next_pow2, on_device, op_name, partial_stats, split_tiles, tl, tl_acc,
                    triton)

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
    from .utils import store_partial_stats, tile_stats_merge

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
                                HAS_NBT=update and num_batches_tracked is not None,
                                CUMULATIVE=momentum is None, ACC=tl_acc(mean.dtype), BLOCK_C=channel_block(C, 256, 1024))
    return scale, shift


@bn_affine.register_fake
def _bn_affine_fake(mean, var, weight, bias, running_mean, running_var, num_batches_tracked, count, eps, momentum,
                    update):
    return torch.empty_like(mean), torch.empty_like(mean)


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


# ----------------------------------------------------------------------- a BN on a tensor that is already there
# (PSA's qkv and pe convs are cuDNN's): its batch statistics, affine and running-statistics update in one op, and
# its backward (the statistics' gradient, an elementwise pass over x) in one op.
if triton is not None:
    @triton.jit(do_not_specialize=["HW", "W", "NP", "tiles_per_prog"])
    def _channel_stats_kernel(x_ptr, pcnt_ptr, pmean_ptr, pm2_ptr, C, HW, W, NP, tiles_per_prog,
                              sxn, sxc, sxh, sxw, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        pid = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        n_run = tl.zeros([BLOCK_C], ACC)
        mean_run = tl.zeros([BLOCK_C], ACC)
        m2_run = tl.zeros([BLOCK_C], ACC)
        for i in range(tiles_per_prog):
            pf = (pid * tiles_per_prog + i) * BLOCK_P + tl.arange(0, BLOCK_P)
            pmask = pf < NP
            q = pf % HW
            m2d = pmask[:, None] & cmask[None, :]
            xp = x_ptr + (pf // HW).to(tl.int64)[:, None] * sxn + c[None, :].to(tl.int64) * sxc \
                + (q // W)[:, None] * sxh + (q % W)[:, None] * sxw
            xv = tl.load(xp, mask=m2d, other=0.0).to(ACC)
            n_run, mean_run, m2_run = tile_stats_merge(n_run, mean_run, m2_run, xv, m2d,
                                                       tl.sum(pmask.to(ACC), axis=0))
        store_partial_stats(pcnt_ptr, pmean_ptr, pm2_ptr, pid, c, cmask, C, n_run, mean_run, m2_run, BLOCK_C)

    @triton.jit(do_not_specialize=["HW", "W", "NP", "tiles_per_prog"])
    def _channel_stats_grad_kernel(x_ptr, gx_ptr, mean_ptr, gmean_ptr, gvar_ptr, inv_n, C, HW, W, NP,
                                   tiles_per_prog, sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw,
                                   ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """grad x = d mean / dx * gmean + d var / dx * gvar = gmean / n + 2 gvar (x - mean) / n."""
        pid = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        mu = tl.load(mean_ptr + c, mask=cmask, other=0.0).to(ACC)
        c2 = tl.load(gvar_ptr + c, mask=cmask, other=0.0).to(ACC) * (2.0 * inv_n)
        c1 = tl.load(gmean_ptr + c, mask=cmask, other=0.0).to(ACC) * inv_n - c2 * mu
        for i in range(tiles_per_prog):
            pf = (pid * tiles_per_prog + i) * BLOCK_P + tl.arange(0, BLOCK_P)
            q = pf % HW
            m2d = (pf < NP)[:, None] & cmask[None, :]
            n = (pf // HW).to(tl.int64)[:, None]
            h = (q // W)[:, None]
            w = (q % W)[:, None]
            cc = c[None, :].to(tl.int64)
            xv = tl.load(x_ptr + n * sxn + cc * sxc + h * sxh + w * sxw, mask=m2d, other=0.0).to(ACC)
            tl.store(gx_ptr + n * sgn + cc * sgc + h * sgh + w * sgw, (c1[None, :] + c2[None, :] * xv)
                     .to(gx_ptr.dtype.element_ty), mask=m2d)


def _tiles(x):
    """(BLOCK_P, BLOCK_C, grid, tiles per program) of the per-channel passes over x (B, C, H, W)."""
    N, C, H, W = x.shape
    NP = N * H * W
    bc = layout_channel_block(C, x)
    if x.device.type != "cuda":
        bp = min(max(next_pow2(NP), 16), max(16, 16384 // bc))
    else:
        bp = 4096 // bc if is_channels_last(x) else 512
    cblk = triton.cdiv(C, bc)
    splits, per = split_tiles(triton.cdiv(NP, bp), cblk, x.device)
    return bp, bc, (splits, cblk), per


@torch.library.custom_op(op_name("bn_batch_affine"), mutates_args=("running_mean", "running_var",
                                                                   "num_batches_tracked"))
def bn_batch_affine(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
                    running_var: Optional[Tensor], num_batches_tracked: Optional[Tensor], eps: float,
                    momentum: Optional[float], update: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(scale, shift, mean, biased var) of a BN normalising x (B, C, H, W) with its batch statistics (fp32; fp64
    for fp64 x); with `update`, the running statistics updated as nn.BatchNorm2d does. One statistics pass over x
    (per-program partials merged on the device), then bn_affine. No autograd of its own (it mutates):
    scale_shift differentiates it.

    Arguments:
        x: (B, C, H, W), fp32/fp16/bf16/fp64, any strides; on a CUDA device, or on the CPU only under
            TRITON_INTERPRET=1.
        weight, bias: (C,) the BN's gamma / beta, any float dtype, x's device. None: 1 / 0.
        running_mean, running_var: (C,) updated in place (their dtype kept) when `update`; running_mean None: no
            update.
        num_batches_tracked: () int64 counter, incremented when updating; None: not counted.
        eps: the BN's eps. momentum: its momentum; None: the cumulative moving average.
        update: update the running statistics (training mode).

    Returns:
        scale, shift: (C,) with bn(x) == x * scale + shift; mean, var: (C,) batch mean and biased variance over
        B H W values; all in the accumulation dtype (fp32, fp64 for fp64 x).

    Raises:
        RuntimeError: Triton cannot be imported; a CPU x without TRITON_INTERPRET=1, a CUDA x with it, or another
            device type (utils.check_device). No other checks.
    """
    check_device(x)
    N, C, H, W = x.shape
    sd = acc_dtype(x)
    bp, bc, grid, per = _tiles(x)
    pcnt, pmean, pm2 = partial_stats(grid[0], C, x, sd, True)
    with on_device(x):
        _channel_stats_kernel[grid](x, pcnt, pmean, pm2, C, H * W, W, N * H * W, per, *x.stride(), ACC=tl_acc(sd),
                                    BLOCK_P=bp, BLOCK_C=bc)
    mean, var = finish_stats(pcnt, pmean, pm2, x)
    scale, shift = bn_affine(mean, var, weight, bias, running_mean, running_var, num_batches_tracked,
                             float(N * H * W), eps, momentum, update)
    return scale, shift, mean, var


@bn_batch_affine.register_fake
def _bn_batch_affine_fake(x, weight, bias, running_mean, running_var, num_batches_tracked, eps, momentum, update):
    v = x.new_empty(x.shape[1], dtype=acc_dtype(x))
    return v, torch.empty_like(v), torch.empty_like(v), torch.empty_like(v)


@torch.library.custom_op(op_name("bn_batch_affine_backward"), mutates_args=())
def bn_batch_affine_backward(grad_scale: Optional[Tensor], grad_shift: Optional[Tensor], x: Tensor, mean: Tensor,
                             var: Tensor, weight: Optional[Tensor], has_bias: bool, bias_dtype: torch.dtype,
                             eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(grad x, grad weight, grad bias) of bn_batch_affine; the last two empty where the BN has no such parameter.
    bn_affine_backward gives the gradients of (mean, var, weight, bias); one elementwise pass over x then forms
    grad x = grad_mean / n + 2 grad_var (x - mean) / n, n = B H W.

    Arguments:
        grad_scale, grad_shift: (C,) gradients reaching scale / shift, mean's dtype, x's device; None: zero.
        x: (B, C, H, W), the forward's input, fp32/fp16/bf16/fp64, any strides; on a CUDA device, or on the CPU
            only under TRITON_INTERPRET=1.
        mean, var: (C,) the forward's batch statistics, the accumulation dtype (fp32, fp64 for fp64 x).
        weight: (C,) the BN's gamma; None: no weight. has_bias, bias_dtype: whether the BN has a bias, its dtype.
        eps: the BN's eps.

    Returns:
        grad x: (B, C, H, W) in x's dtype, channels_last when x is (else NCHW).
        grad weight: (C,) in weight's dtype, (0,) without one; grad bias: (C,) in bias_dtype, (0,) without one.

    Raises:
        RuntimeError: Triton cannot be imported; a CPU x without TRITON_INTERPRET=1, a CUDA x with it, or another
            device type (utils.check_device, on x and on mean). No other checks.
    """
    check_device(x)
    N, C, H, W = x.shape
    g_mean, g_var, g_w, g_b = bn_affine_backward(grad_scale, grad_shift, mean, var, weight, has_bias, bias_dtype, eps)
    gx = empty_4d(tuple(x.shape), x)
    bp, bc, grid, per = _tiles(x)
    with on_device(x):
        _channel_stats_grad_kernel[grid](x, gx, mean, g_mean, g_var, 1.0 / (N * H * W), C, H * W, W, N * H * W,
                                         per, *x.stride(), *gx.stride(), ACC=tl_acc(mean.dtype), BLOCK_P=bp,
                                         BLOCK_C=bc)
    return gx, g_w, g_b


@bn_batch_affine_backward.register_fake
def _bn_batch_affine_backward_fake(grad_scale, grad_shift, x, mean, var, weight, has_bias, bias_dtype, eps):
    C = x.shape[1]
    return (empty_4d(tuple(x.shape), x),
            x.new_empty(C if weight is not None else 0, dtype=weight.dtype if weight is not None else x.dtype),
            x.new_empty(C if has_bias else 0, dtype=bias_dtype))


class _BatchAffine(torch.autograd.Function):
    """Autograd of bn_batch_affine (an op that updates running statistics cannot register its own)."""

    @staticmethod
    def forward(ctx, x, weight, bias, bn, update):
        scale, shift, mean, var = bn_batch_affine(x, weight, bias, bn.running_mean, bn.running_var,
                                                  bn.num_batches_tracked, float(bn.eps), bn.momentum, update)
        ctx.save_for_backward(x, mean, var, weight)
        ctx.cfg = (bias is not None, bias.dtype if bias is not None else mean.dtype, float(bn.eps))
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(mean, var)
        return scale, shift, mean, var

    @staticmethod
    def backward(ctx, grad_scale, grad_shift, _mean, _var):
        x, mean, var, weight = ctx.saved_tensors
        has_bias, bias_dtype, eps = ctx.cfg
        gx, g_w, g_b = bn_batch_affine_backward(grad_scale, grad_shift, x, mean, var, weight, has_bias, bias_dtype,
                                                eps)
        return gx, g_w if weight is not None else None, g_b if has_bias else None, None, None


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
    return _BatchAffine.apply(x, bn.weight, bn.bias, bn, bool(training))[:2]


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
