"""The op `bn_batch_affine`: a BN on a tensor that is already there (PSA's qkv and pe convs are cuDNN's): its batch
statistics, (scale, shift) and running-statistics update in one op, and its backward (the statistics' gradient,
an elementwise pass over x) in one op; `scale_shift`, a BN's (scale, shift) for a tensor in either mode."""
from typing import Optional

import torch

from .batchnorm import bn_affine_backward_impl, bn_affine_impl, running_scale_shift, uses_batch_stats
from .utils import (acc_dtype, check_device, empty_4d, finish_stats, is_channels_last, layout_channel_block,
                    next_pow2, on_device, op_name, partial_stats, split_tiles, tl, tl_acc, triton)

Tensor = torch.Tensor


if triton is not None:
    from .utils import store_partial_stats, tile_stats_merge

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
    scale, shift = bn_affine_impl(mean, var, weight, bias, running_mean, running_var, num_batches_tracked,
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
    g_mean, g_var, g_w, g_b = bn_affine_backward_impl(grad_scale, grad_shift, mean, var, weight, has_bias, bias_dtype,
                                                      eps)
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
