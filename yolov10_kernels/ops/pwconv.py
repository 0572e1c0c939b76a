"""Pointwise (1x1) conv for training as a tiled matmul, with a BN prologue and a statistics epilogue.

    a = in_act(x * in_scale + in_shift)        prologue, per input channel, applied to each loaded tile
    y = a @ weight^T (+ bias)                  over rows (n, h, w), in fp32 (fp64 for fp64 x)
    mean, var = batch mean and biased variance of y per output channel (optional; per-tile (count, mean, M2)
                partials merged with the parallel-variance formula)

Op `yolov10_kernels::pw_conv_bn(x, weight, in_scale?, in_shift?, bias?, in_act, stats) -> (y, mean, var)`, mean/var
empty when stats is False. Differentiable in x, weight, the affine vectors and bias. Backward: grad x (g @ weight,
the prologue derivative applied on the fly) and grad weight (g^T @ a, a recomputed from x, the N x H x W reduction
split across programs into fp32 partials then summed), where g = dL/dy + dmean / M + dvar * 2 (y - mean) / M is
formed on the fly from the saved raw output y: one kernel reading g and x once where both channel counts fit one
block (FUSED_MAX: the light cls head) and the dots use tensor cores (or the interpreter), else two, each reading
them. fp16/bf16 tiles go through tensor cores with fp32 accumulation (fp32 operands under the interpreter, whose
bf16 dot is broken); fp32 uses TF32 where torch allows it for matmuls or cuDNN convs (as the eager convs it replaces
do), IEEE otherwise. NCHW and channels_last inputs are read in place; the output follows the input's memory format."""
from typing import Optional

import torch

from ..gpus import device_profile, smem_estimate
from .utils import (MAXNREG, acc_dtype, check_device, check_tensor, empty, empty_4d, finish_stats, grad_like,
                    next_pow2, on_device, op_name, partial_stats, split_tiles, stat_grads, sum_partials,
                    target_programs, tf32_allowed, tl, tl_acc, triton, triton_interpreted, vec)

Tensor = torch.Tensor

# The fused backward (one pass over g and x) runs when both channel counts, rounded up to a power of two, are at most
# this: the light cls head's 1x1 convs (64..128 channels at yolov10n/s).
FUSED_MAX = 128
# Its GPU tiles, sized with ptxas on sm_90a (bench.static): the 128 x 128 fp32 grad W accumulator and the weight,
# held for the whole run, leave room for 32-row tiles at 8 warps (64 rows spill, as do 4 warps or 16, which cap
# registers at 128); two stages prefetch the next tile where the GPU's shared memory allows (227 KB: fp32
# included), else one; where even that does not fit, the backward takes the two kernels.
FUSED_BLOCK_M, FUSED_WARPS, FUSED_STAGES = 32, 8, 2

# Predicted shared memory per kernel (gpus.smem_estimate), from (rows, output block, reduced block, element
# bytes) -> (elements staged per loop iteration, resident bytes); calibrated with bench.static on sm_86, whose
# pipelining allocates the most of the profiles' targets. "fused": output block = CO, reduced block = CI.
_SMEM = {
    "fwd": lambda m, n, k, e: (m * k + k * n, m * k * e),  # x and W tiles; the prologue's activation for the MMA
    "dgrad": lambda m, n, k, e: (2 * m * k + k * n, 0),  # dL/dy and y tiles (g is made of both) and W tiles
    "wgrad": lambda m, n, k, e: (m * n + m * k, 2 * m * n * e),  # g and x tiles; g transposed for the MMA
    "fused": lambda m, n, k, e: (m * (n + k), 2 * n * k * e),  # g and x tiles; the weight, as both dots' operand
}
# Elements of each kernel's accumulator tile (wgrad, fused: the grad W block), in the accumulation dtype: after the
# loop its layout conversion for the store goes through shared memory, reusing the pipeline's buffers, so a kernel
# needs the larger of the two (metadata.shared of an fp64 128 x 128 forward storing NCHW: 128 KB, over sm_86's 99 KB).
_ACC_TILE = {"fwd": lambda m, n, k: m * n, "dgrad": lambda m, n, k: m * n, "wgrad": lambda m, n, k: n * k,
             "fused": lambda m, n, k: n * k}


# ---------------------------------------------------------------------------------------------------- kernels
if triton is not None:  # without triton the ops import, and their launchers raise (utils.check_device)
    from .utils import load_stat_grads, silu_fwd_bwd, store_partial_stats, tile_stats_merge

    # what changes with the batch or image size is not specialised on: no recompile for a new size
    VARYING = ["M", "HW"]
    _TL = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32, torch.float64: tl.float64}

    @triton.jit
    def _prologue(x_ptr, row, ci, m, sxc, s_ptr, t_ptr, kmask, IN_AFFINE: tl.constexpr, IN_ACT: tl.constexpr,
                  ACC: tl.constexpr):
        """(raw x, activation a, d a / d u) for a [BLOCK_M, BLOCK_K] tile; a is 0 outside the mask."""
        xv = tl.load(x_ptr + row[:, None] + ci[None, :].to(tl.int64) * sxc, mask=m, other=0.0).to(ACC)
        u = xv
        if IN_AFFINE:
            s = tl.load(s_ptr + ci, mask=kmask, other=0.0).to(ACC)
            t = tl.load(t_ptr + ci, mask=kmask, other=0.0).to(ACC)
            u = xv * s[None, :] + t[None, :]
        a = u
        da = tl.zeros_like(u) + 1.0
        if IN_ACT:
            a, da = silu_fwd_bwd(u)
        a = tl.where(m, a, 0.0)
        return xv, a, da

    @triton.jit
    def _dot(a, b, DOT_DT: tl.constexpr, IEEE: tl.constexpr):
        if IEEE:
            return tl.dot(a.to(DOT_DT), b.to(DOT_DT), input_precision="ieee")
        return tl.dot(a.to(DOT_DT), b.to(DOT_DT))

    @triton.jit
    def _grad_y(gy_ptr, y_ptr, row_g, row_y, co, m, sgc, syc, mu, gm, gv2, HAS_GY: tl.constexpr, STATS: tl.constexpr,
                ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """g = dL/dy + dL/dmean / M + dL/dvar * 2 (y - mean) / M on a [BLOCK_M, BLOCK_N] tile (0 outside the mask)."""
        g = tl.zeros([BLOCK_M, BLOCK_N], ACC)
        if HAS_GY:
            g = tl.load(gy_ptr + row_g[:, None] + co[None, :].to(tl.int64) * sgc, mask=m, other=0.0).to(ACC)
        if STATS:
            y = tl.load(y_ptr + row_y[:, None] + co[None, :].to(tl.int64) * syc, mask=m, other=0.0).to(ACC)
            g += gm[None, :] + gv2[None, :] * (y - mu[None, :])
        return tl.where(m, g, 0.0)

    @triton.jit(do_not_specialize=VARYING)
    def _pw_fwd_kernel(x_ptr, w_ptr, s_ptr, t_ptr, b_ptr, y_ptr, pcnt_ptr, pmean_ptr, pm2_ptr,
                       M, HW, CI, CO, sxn, sxc, sxp, syn, syc, syp, swo, swi,
                       IN_AFFINE: tl.constexpr, IN_ACT: tl.constexpr, HAS_BIAS: tl.constexpr, STATS: tl.constexpr,
                       ACC: tl.constexpr, DOT_DT: tl.constexpr, IEEE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mmask = rm < M
        img = (rm // HW).to(tl.int64)
        hw = (rm % HW).to(tl.int64)
        co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        comask = co < CO
        acc = tl.zeros([BLOCK_M, BLOCK_N], ACC)
        for k0 in range(0, CI, BLOCK_K):
            ci = k0 + tl.arange(0, BLOCK_K)
            kmask = ci < CI
            _, a, _ = _prologue(x_ptr, img * sxn + hw * sxp, ci, mmask[:, None] & kmask[None, :], sxc, s_ptr, t_ptr,
                                kmask, IN_AFFINE, IN_ACT, ACC)
            wt = tl.load(w_ptr + co[None, :] * swo + ci[:, None] * swi, mask=kmask[:, None] & comask[None, :], other=0.0)
            acc += _dot(a, wt, DOT_DT, IEEE).to(ACC)
        if HAS_BIAS:
            acc += tl.load(b_ptr + co, mask=comask, other=0.0).to(ACC)[None, :]
        m2d = mmask[:, None] & comask[None, :]
        tl.store(y_ptr + (img * syn + hw * syp)[:, None] + co[None, :].to(tl.int64) * syc,
                 acc.to(y_ptr.dtype.element_ty), mask=m2d)
        if STATS:
            z = tl.zeros([BLOCK_N], ACC)
            nb = tl.sum(mmask.to(ACC), axis=0)
            n_t, mean_t, m2_t = tile_stats_merge(z, z, z, acc, m2d, nb)
            store_partial_stats(pcnt_ptr, pmean_ptr, pm2_ptr, pid_m, co, comask, CO, n_t, mean_t, m2_t, BLOCK_N)

    @triton.jit(do_not_specialize=VARYING)
    def _pw_dgrad_kernel(gy_ptr, y_ptr, mean_ptr, gmean_ptr, gvar_ptr, inv_m, w_ptr, x_ptr, s_ptr, t_ptr,
                         gx_ptr, pgs_ptr, pgt_ptr,
                         M, HW, CI, CO, sgn, sgc, sgp, syn, syc, syp, sxn, sxc, sxp, sdn, sdc, sdp, swo, swi,
                         HAS_GY: tl.constexpr, STATS: tl.constexpr, IN_AFFINE: tl.constexpr, IN_ACT: tl.constexpr,
                         ACC: tl.constexpr, DOT_DT: tl.constexpr, IEEE: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """grad a = g @ W over a [BLOCK_M rows, BLOCK_K input channels] tile, then grad x = grad a * a'(u) * scale."""
        pid_m = tl.program_id(0)
        pid_k = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mmask = rm < M
        img = (rm // HW).to(tl.int64)
        hw = (rm % HW).to(tl.int64)
        ci = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        kmask = ci < CI
        ga = tl.zeros([BLOCK_M, BLOCK_K], ACC)
        for n0 in range(0, CO, BLOCK_N):
            co = n0 + tl.arange(0, BLOCK_N)
            comask = co < CO
            mu, gm, gv2 = load_stat_grads(mean_ptr, gmean_ptr, gvar_ptr, co, comask, inv_m, STATS, ACC, BLOCK_N)
            g = _grad_y(gy_ptr, y_ptr, img * sgn + hw * sgp, img * syn + hw * syp, co, mmask[:, None] & comask[None, :],
                        sgc, syc, mu, gm, gv2, HAS_GY, STATS, ACC, BLOCK_M, BLOCK_N)
            wt = tl.load(w_ptr + co[:, None] * swo + ci[None, :] * swi, mask=comask[:, None] & kmask[None, :], other=0.0)
            ga += _dot(g, wt, DOT_DT, IEEE).to(ACC)
        m2d = mmask[:, None] & kmask[None, :]
        xv, _, da = _prologue(x_ptr, img * sxn + hw * sxp, ci, m2d, sxc, s_ptr, t_ptr, kmask, IN_AFFINE, IN_ACT, ACC)
        gu = ga
        if IN_ACT:
            gu = ga * da
        if IN_AFFINE:
            gu = tl.where(m2d, gu, 0.0)
            tl.store(pgs_ptr + pid_m * CI + ci, tl.sum(gu * xv, axis=0), mask=kmask)
            tl.store(pgt_ptr + pid_m * CI + ci, tl.sum(gu, axis=0), mask=kmask)
            s = tl.load(s_ptr + ci, mask=kmask, other=0.0).to(ACC)
            gu = gu * s[None, :]
        tl.store(gx_ptr + (img * sdn + hw * sdp)[:, None] + ci[None, :].to(tl.int64) * sdc,
                 gu.to(gx_ptr.dtype.element_ty), mask=m2d)

    @triton.jit(do_not_specialize=VARYING + ["rows_per_split"])
    def _pw_wgrad_kernel(gy_ptr, y_ptr, mean_ptr, gmean_ptr, gvar_ptr, inv_m, x_ptr, s_ptr, t_ptr, pgw_ptr, pgb_ptr,
                         M, HW, CI, CO, rows_per_split, sgn, sgc, sgp, syn, syc, syp, sxn, sxc, sxp,
                         HAS_GY: tl.constexpr, STATS: tl.constexpr, IN_AFFINE: tl.constexpr, IN_ACT: tl.constexpr,
                         HAS_BIAS: tl.constexpr, ACC: tl.constexpr, DOT_DT: tl.constexpr, IEEE: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """Partial grad W [BLOCK_N, BLOCK_K] = sum over this split's rows of g^T a (fp32), and partial grad bias."""
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        split = tl.program_id(2)
        co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        comask = co < CO
        ci = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        kmask = ci < CI
        mu, gm, gv2 = load_stat_grads(mean_ptr, gmean_ptr, gvar_ptr, co, comask, inv_m, STATS, ACC, BLOCK_N)
        acc = tl.zeros([BLOCK_N, BLOCK_K], ACC)
        gb = tl.zeros([BLOCK_N], ACC)
        for r0 in range(0, rows_per_split, BLOCK_M):
            rm = split * rows_per_split + r0 + tl.arange(0, BLOCK_M)
            mmask = rm < M
            img = (rm // HW).to(tl.int64)
            hw = (rm % HW).to(tl.int64)
            g = _grad_y(gy_ptr, y_ptr, img * sgn + hw * sgp, img * syn + hw * syp, co, mmask[:, None] & comask[None, :],
                        sgc, syc, mu, gm, gv2, HAS_GY, STATS, ACC, BLOCK_M, BLOCK_N)
            _, a, _ = _prologue(x_ptr, img * sxn + hw * sxp, ci, mmask[:, None] & kmask[None, :], sxc, s_ptr, t_ptr,
                                kmask, IN_AFFINE, IN_ACT, ACC)
            acc += _dot(tl.trans(g), a, DOT_DT, IEEE).to(ACC)
            if HAS_BIAS:
                gb += tl.sum(g, axis=0)
        tl.store(pgw_ptr + split * (CO * CI) + co[:, None] * CI + ci[None, :], acc,
                 mask=comask[:, None] & kmask[None, :])
        if HAS_BIAS:
            tl.store(pgb_ptr + split * CO + co, gb, mask=comask & (pid_k == 0))

    @triton.jit(do_not_specialize=VARYING + ["tiles_per_prog"])
    def _pw_bwd_fused_kernel(gy_ptr, y_ptr, mean_ptr, gmean_ptr, gvar_ptr, inv_m, w_ptr, x_ptr, s_ptr, t_ptr,
                             gx_ptr, pgs_ptr, pgt_ptr, pgw_ptr, pgb_ptr,
                             M, HW, CI, CO, tiles_per_prog, sgn, sgc, sgp, syn, syc, syp, sxn, sxc, sxp, sdn, sdc, sdp,
                             swo, swi,
                             HAS_GY: tl.constexpr, STATS: tl.constexpr, IN_AFFINE: tl.constexpr, IN_ACT: tl.constexpr,
                             HAS_BIAS: tl.constexpr, ACC: tl.constexpr, DOT_DT: tl.constexpr, IEEE: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """The dgrad and wgrad kernels in one pass, for channel counts that fit one block each (BLOCK_N >= CO,
        BLOCK_K >= CI): a program reads g and x of its run of row tiles once, writes grad x, and keeps its partial
        grad W = g^T a, grad bias and in_scale / in_shift sums (fp32) to the end, one row of partials per program."""
        pid = tl.program_id(0)
        co = tl.arange(0, BLOCK_N)
        comask = co < CO
        ci = tl.arange(0, BLOCK_K)
        kmask = ci < CI
        mu, gm, gv2 = load_stat_grads(mean_ptr, gmean_ptr, gvar_ptr, co, comask, inv_m, STATS, ACC, BLOCK_N)
        wt = tl.load(w_ptr + co[:, None] * swo + ci[None, :] * swi, mask=comask[:, None] & kmask[None, :], other=0.0)
        acc_w = tl.zeros([BLOCK_N, BLOCK_K], ACC)
        gb = tl.zeros([BLOCK_N], ACC)
        gs = tl.zeros([BLOCK_K], ACC)
        gt = tl.zeros([BLOCK_K], ACC)
        for i in range(tiles_per_prog):
            rm = (pid * tiles_per_prog + i) * BLOCK_M + tl.arange(0, BLOCK_M)
            mmask = rm < M
            img = (rm // HW).to(tl.int64)
            hw = (rm % HW).to(tl.int64)
            g = _grad_y(gy_ptr, y_ptr, img * sgn + hw * sgp, img * syn + hw * syp, co, mmask[:, None] & comask[None, :],
                        sgc, syc, mu, gm, gv2, HAS_GY, STATS, ACC, BLOCK_M, BLOCK_N)
            m2d = mmask[:, None] & kmask[None, :]
            xv, a, da = _prologue(x_ptr, img * sxn + hw * sxp, ci, m2d, sxc, s_ptr, t_ptr, kmask, IN_AFFINE, IN_ACT,
                                  ACC)
            acc_w += _dot(tl.trans(g), a, DOT_DT, IEEE).to(ACC)
            if HAS_BIAS:
                gb += tl.sum(g, axis=0)
            # g is 0 in rows past M and W in channels past CI: gu is exactly 0 outside the tile, no mask needed
            gu = _dot(g, wt, DOT_DT, IEEE).to(ACC)
            if IN_ACT:
                gu = gu * da
            if IN_AFFINE:
                gs += tl.sum(gu * xv, axis=0)
                gt += tl.sum(gu, axis=0)
                gu = gu * tl.load(s_ptr + ci, mask=kmask, other=0.0).to(ACC)[None, :]
            tl.store(gx_ptr + (img * sdn + hw * sdp)[:, None] + ci[None, :].to(tl.int64) * sdc,
                     gu.to(gx_ptr.dtype.element_ty), mask=m2d)
        tl.store(pgw_ptr + pid * (CO * CI) + co[:, None] * CI + ci[None, :], acc_w,
                 mask=comask[:, None] & kmask[None, :])
        if HAS_BIAS:
            tl.store(pgb_ptr + pid * CO + co, gb, mask=comask)
        if IN_AFFINE:
            tl.store(pgs_ptr + pid * CI + ci, gs, mask=kmask)
            tl.store(pgt_ptr + pid * CI + ci, gt, mask=kmask)


# ---------------------------------------------------------------------------------------------------- launchers
def _flat(t):
    """t (4-D) with rows (n, h, w) addressable as n * s_n + (h * W + w) * s_hw: returns (t, (s_n, s_c, s_hw)).
    NCHW- and channels_last-contiguous tensors qualify as they are; anything else is copied to NCHW."""
    N, C, H, W = t.shape
    sn, sc, sh, sw = t.stride()
    if W == 1:
        sw = sh
    if (H == 1 or sh == W * sw) and (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)
                                     or t.numel() == 0):
        return t, (sn, sc, sw)
    t = t.contiguous()
    return t, (t.stride(0), t.stride(1), t.stride(3) if W > 1 else t.stride(2))


def _dot_cfg(x):
    """(dot operand dtype, IEEE fp32?): fp16/bf16 on tensor cores; fp32 in TF32 where torch allows it
    (utils.tf32_allowed), else exact; fp64 exact; interpreter, or bf16 on a GPU without bf16 dots (a T4, whose
    drop-ins run the reference in bf16 anyway; gpus profile): fp32 operands."""
    if x.dtype in (torch.float16, torch.bfloat16) and not triton_interpreted() and x.device.type == "cuda" \
            and (x.dtype == torch.float16 or device_profile(x.device).bf16):
        return _TL[x.dtype], False
    return tl_acc(x.dtype), not tf32_allowed(x)


def _blocks(M, CI, CO, x, kernel="fwd"):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) of a (M x CI) @ (CI x CO) tile; None for "fused" where its
    shared memory or registers do not fit the GPU (the two-kernel backward runs). Sized with ptxas (bench.static):
    the backward kernels hold more [rows x channels] tiles than the forward (dgrad: the accumulator, x and the
    activation derivative; wgrad: rows are its reduced dimension, staged num_stages deep in shared memory), so
    dgrad keeps output blocks <= 64 wide (no spills) and wgrad 64 rows per step (fp32 fits in 227 KB). The fused
    backward takes both channel dims whole (<= FUSED_MAX) and holds the grad W accumulator besides the dgrad tiles:
    FUSED_BLOCK_M rows per step. On a GPU with less shared memory (gpus.device_profile) the preferred tiles give
    way, in order, to fewer stages, a narrower reduced block, then narrower output and row blocks: the first whose
    predicted shared memory (_SMEM) fits and, where Triton's dots run on FMA units (a T4), whose dot tiles (_live)
    fit the registers."""
    cpu = triton_interpreted() or x.device.type != "cuda"
    if cpu:
        bm = min(max(next_pow2(M), 16), 256)
        if kernel == "fused":
            return bm, max(next_pow2(CO), 16), max(next_pow2(CI), 16), 4, FUSED_STAGES
        return bm, min(max(next_pow2(CO), 16), 64), min(max(next_pow2(CI), 16), 64), 4, 3
    profile, e = device_profile(x.device), x.element_size()
    if kernel == "fused":
        bn, bk = max(next_pow2(CO), 16), max(next_pow2(CI), 16)
        # the grad W accumulator and both tiles stay in registers: with FMA dots (a T4) they spill (1.4 KB per
        # thread at 128 x 64), and so do fp32 operand fragments with mma.sync (A100: 0.5 KB): two kernels there
        if not profile.dots_fit_registers(_live("wgrad", (FUSED_BLOCK_M, bn, bk)), FUSED_WARPS) \
                or (profile.mma_sync and e >= 4):
            return None
        # with mma.sync a 128 x 128 grad W accumulator leaves no registers for a second stage's operand fragments
        # (12 bytes per thread spill on sm_120): one stage there
        stages = 1 if profile.mma_sync and bn * bk >= 128 * 128 else FUSED_STAGES
        for st in range(stages, 0, -1):
            if profile.fits(_smem("fused", (FUSED_BLOCK_M, bn, bk, st), e)):
                return FUSED_BLOCK_M, bn, bk, FUSED_WARPS, st
        return None
    bm = 64 if kernel == "wgrad" else 128  # not sized by M: a new batch or image size must not recompile
    bn = min(max(next_pow2(CO), 16), 64 if kernel == "dgrad" else 128)
    bk = min(max(next_pow2(CI), 16), 64 if e <= 2 else 32)
    shapes = ((bm, bn), (bm, bn // 2), (bm // 2, bn // 2), (bm // 2, bn // 4))
    candidates = [(m, n, k, st) for m, n in shapes if min(m, n) >= 16 for k in (bk, bk // 2, bk // 4) if k >= 16
                  for st in (3, 2)]

    def fits(c):
        return profile.fits(_smem(kernel, c, e)) and profile.dots_fit_registers(_live(kernel, c), _warps(*c[:2]))
    bm, bn, bk, st = next((c for c in candidates if fits(c)), candidates[-1])
    return bm, bn, bk, _warps(bm, bn), st


def _warps(m, n):
    return 8 if m * n >= 128 * 64 else 4


def _live(kernel, cfg):
    """Elements of the accumulator and both dot operands of cfg = (rows, output block, reduced block, _) (wgrad:
    the rows are reduced and the accumulator is output x input channels): what FMA dots hold in registers."""
    m, n, k = cfg[:3]
    return n * k + m * (n + k) if kernel == "wgrad" else m * n + k * (m + n)


def _smem(kernel, cfg, e):
    """Predicted shared memory of `kernel` with cfg = (rows, output block, reduced block, stages), e-byte elements."""
    elems, resident = _SMEM[kernel](*cfg[:3], e)
    return max(smem_estimate(elems, e, cfg[3], resident), _ACC_TILE[kernel](*cfg[:3]) * max(e, 4))


def _check_args(x, weight, in_scale, in_shift, bias):
    check_tensor("x", x, dim=4)
    check_device(x)
    check_tensor("weight", weight, device=x.device)
    CI = x.shape[1]
    if not (weight.dim() == 2 or (weight.dim() == 4 and weight.shape[2] == weight.shape[3] == 1)) \
            or weight.shape[1] != CI:
        raise ValueError(f"pointwise weight must be (C_out, C_in, 1, 1) or (C_out, C_in) with C_in = x's {CI} "
                         f"channels; got weight {tuple(weight.shape)} for x {tuple(x.shape)}")
    for name, t in (("in_scale", in_scale), ("in_shift", in_shift)):
        if t is not None:
            check_tensor(name, t, device=x.device)
            if t.numel() != CI:
                raise ValueError(f"{name} must have {CI} elements (one per input channel), got {t.numel()}")
    if (in_scale is None) != (in_shift is None):
        raise ValueError("in_scale and in_shift must be given together")
    if bias is not None:
        check_tensor("bias", bias, device=x.device)
        if bias.numel() != weight.shape[0]:
            raise ValueError(f"bias must have {weight.shape[0]} elements (one per output channel), got {bias.numel()}")


def _pw_forward(x, weight, in_scale, in_shift, bias, in_act, stats):
    N, CI, H, W = x.shape
    CO = weight.shape[0]
    sd = acc_dtype(x)
    y = empty_4d((N, CO, H, W), x)
    M, HW = N * H * W, H * W
    if M == 0 or CO == 0:
        return y, x.new_zeros(CO if stats else 0, dtype=sd), x.new_zeros(CO if stats else 0, dtype=sd)
    x, (sxn, sxc, sxp) = _flat(x)
    _, (syn, syc, syp) = _flat(y)
    w = weight.detach().reshape(CO, CI)
    BM, BN, BK, nw, ns = _blocks(M, CI, CO, x)
    mblk = triton.cdiv(M, BM)
    pcnt, pmean, pm2 = partial_stats(mblk, CO, x, sd, stats)
    s, t, b = vec(in_scale), vec(in_shift), vec(bias)
    dummy = pcnt
    dot_dt, ieee = _dot_cfg(x)
    with on_device(x):
        _pw_fwd_kernel[(mblk, triton.cdiv(CO, BN))](
            x, w, s if s is not None else dummy, t if t is not None else dummy, b if b is not None else dummy, y,
            pcnt, pmean, pm2, M, HW, CI, CO, sxn, sxc, sxp, syn, syc, syp, w.stride(0), w.stride(1),
            IN_AFFINE=s is not None, IN_ACT=bool(in_act), HAS_BIAS=b is not None, STATS=bool(stats),
            ACC=tl_acc(x.dtype), DOT_DT=dot_dt, IEEE=ieee, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, num_warps=nw,
            num_stages=ns, maxnreg=MAXNREG)
    if stats:
        return (y, *finish_stats(pcnt, pmean, pm2, x))
    return y, x.new_empty(0, dtype=sd), x.new_empty(0, dtype=sd)


def _pw_backward(grad_y, grad_mean, grad_var, x, weight, in_scale, in_shift, y, mean, in_act, has_bias, stats):
    N, CI, H, W = x.shape
    CO = weight.shape[0]
    sd = acc_dtype(x)
    M, HW = N * H * W, H * W
    has_gy = grad_y is not None and grad_y.numel() > 0
    grad_mean, grad_var = stat_grads(grad_mean, grad_var)
    stats = bool(stats) and grad_mean is not None and grad_mean.numel() > 0 \
        and y is not None and y.numel() > 0
    gx = empty_4d((N, CI, H, W), x)

    def zeros_or_empty(present, n):  # distinct tensors: a custom op's outputs may not alias each other
        return torch.zeros(n if present else 0, dtype=sd, device=x.device)
    if (not has_gy and not stats) or M == 0 or CO == 0 or CI == 0:
        return (gx.zero_(), torch.zeros_like(weight), zeros_or_empty(in_scale is not None, CI),
                zeros_or_empty(in_shift is not None, CI), zeros_or_empty(has_bias, CO))
    g_s, g_t, g_b = (x.new_empty(0, dtype=sd) for _ in range(3))
    x, (sxn, sxc, sxp) = _flat(x)
    _, (sdn, sdc, sdp) = _flat(gx)
    dummy = x.new_empty(1, dtype=sd)
    if has_gy:
        grad_y, (sgn, sgc, sgp) = _flat(grad_y)
    else:
        grad_y, (sgn, sgc, sgp) = dummy, (0, 0, 0)
    if stats:
        y, (syn, syc, syp) = _flat(y)
        mu, gm, gv = vec(mean), vec(grad_mean), vec(grad_var)
    else:
        y, (syn, syc, syp) = dummy, (0, 0, 0)
        mu = gm = gv = dummy
    w = weight.detach().reshape(CO, CI)
    s, t = vec(in_scale), vec(in_shift)
    dot_dt, ieee = _dot_cfg(x)
    # the arguments every backward kernel takes, in their order: g's inputs, weight, x and its prologue, grad x
    io = (grad_y, y, mu, gm, gv, 1.0 / M, w, x, s if s is not None else dummy, t if t is not None else dummy, gx)
    strides = (sgn, sgc, sgp, syn, syc, syp, sxn, sxc, sxp)
    flags = dict(HAS_GY=has_gy, STATS=stats, IN_AFFINE=s is not None, IN_ACT=bool(in_act), ACC=tl_acc(x.dtype),
                 DOT_DT=dot_dt, IEEE=ieee)
    # the fused kernel's registers are sized for tensor-core dots: an IEEE dot on the GPU (fp32 with TF32 off, fp64)
    # runs on FMA units with its operands in registers and spills heavily at these widths (ptxas), so takes two kernels
    fused = max(next_pow2(CO), next_pow2(CI)) <= FUSED_MAX and not (ieee and x.device.type == "cuda")
    cfg = _blocks(M, CI, CO, x, "fused") if fused else None  # None: its shared memory does not fit this GPU
    dims = (M, HW, CI, CO)
    pgs, pgt, pgw, pgb = (_fused_backward(io, dims, strides, (sdn, sdc, sdp), bool(has_bias), dummy, flags, cfg)
                          if cfg else _split_backward(io, dims, strides, (sdn, sdc, sdp), bool(has_bias), dummy, flags))
    if s is not None:
        g_s, g_t = sum_partials(pgs, empty(CI, x, sd)), sum_partials(pgt, empty(CI, x, sd))
    gw = sum_partials(pgw, torch.empty_like(weight, memory_format=torch.contiguous_format))
    if has_bias:
        g_b = sum_partials(pgb, empty(CO, x, sd))
    return gx, gw, g_s, g_t, g_b


def _fused_backward(io, dims, strides, gx_strides, has_bias, dummy, flags, cfg):
    """grad x and the per-program partials (in_scale, in_shift, weight, bias grads) in one persistent launch: each
    program a contiguous run of row tiles, so g and x are read once. Returns the partials (dummies where absent)."""
    w, x = io[6], io[7]
    M, _, CI, CO = dims
    sd = acc_dtype(x)
    BM, BN, BK, nw, ns = cfg  # _blocks(..., "fused")
    # one program per SM (its registers leave no room for a second): the fewest grad W partials that fill the GPU
    programs, per = split_tiles(triton.cdiv(M, BM), device_profile(x.device).programs_per_sm, x.device)
    pgs, pgt = (empty((programs, CI), x, sd) if flags["IN_AFFINE"] else dummy for _ in range(2))
    pgw = empty((programs, CO, CI), x, sd)
    pgb = empty((programs, CO), x, sd) if has_bias else dummy
    with on_device(x):
        _pw_bwd_fused_kernel[(programs,)](*io, pgs, pgt, pgw, pgb, *dims, per, *strides, *gx_strides, w.stride(0),
                                          w.stride(1), HAS_BIAS=has_bias, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK,
                                          num_warps=nw, num_stages=ns, maxnreg=MAXNREG, **flags)
    return pgs, pgt, pgw, pgb


def _split_backward(io, dims, strides, gx_strides, has_bias, dummy, flags):
    """Channel counts too wide for one block: grad x and its in_scale / in_shift partials per row block (dgrad),
    then grad W and bias partials with the rows split across programs (wgrad); each reads g and x. Returns the
    partials (dummies where absent)."""
    w, x = io[6], io[7]
    M, _, CI, CO = dims
    sd = acc_dtype(x)
    # grad x: rows x input channels, looping over output channels
    BM, b_ci, b_co, nw, ns = _blocks(M, CO, CI, x, "dgrad")  # (M x CO) @ (CO x CI): CO is the reduced dim
    mblk = triton.cdiv(M, BM)
    pgs, pgt = (empty((mblk, CI), x, sd) if flags["IN_AFFINE"] else dummy for _ in range(2))
    with on_device(x):
        _pw_dgrad_kernel[(mblk, triton.cdiv(CI, b_ci))](
            *io, pgs, pgt, *dims, *strides, *gx_strides, w.stride(0), w.stride(1),
            BLOCK_M=BM, BLOCK_N=b_co, BLOCK_K=b_ci, num_warps=nw, num_stages=ns, maxnreg=MAXNREG, **flags)
    # grad W (and bias): output x input channels, the rows split across programs, fp32 partials
    BM, BN, BK, nw, ns = _blocks(M, CI, CO, x, "wgrad")
    tiles = triton.cdiv(CO, BN) * triton.cdiv(CI, BK)
    want = max(1, min(triton.cdiv(M, BM), triton.cdiv(target_programs(x.device), tiles)))
    rows = triton.cdiv(triton.cdiv(M, want), BM) * BM
    splits = triton.cdiv(M, rows)
    pgw = empty((splits, CO, CI), x, sd)
    pgb = empty((splits, CO), x, sd) if has_bias else dummy
    with on_device(x):
        _pw_wgrad_kernel[(triton.cdiv(CO, BN), triton.cdiv(CI, BK), splits)](
            *io[:6], *io[7:10], pgw, pgb, *dims, rows, *strides, HAS_BIAS=has_bias,
            BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, num_warps=nw, num_stages=ns, maxnreg=MAXNREG, **flags)
    return pgs, pgt, pgw, pgb


# ---------------------------------------------------------------------------------------------------- ops
@torch.library.custom_op(op_name("pw_conv_bn"), mutates_args=())
def pw_conv_bn(x: Tensor, weight: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor],
               bias: Optional[Tensor], in_act: bool, stats: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Pointwise (1x1) conv as a tiled matmul with a BN prologue and a statistics epilogue (the module docstring):
    a = in_act(x * in_scale + in_shift); y = a @ weight^T (+ bias) over rows (n, h, w), accumulated in fp32 (fp64
    for fp64 x; fp16/bf16 dots on tensor cores, fp32 in TF32 where torch allows it); mean, var = the batch mean
    and biased variance of y per output channel. Differentiable (register_autograd) in x, weight, the affine
    vectors and bias.

    Arguments:
        x: (B, C_in, H, W), fp32/fp16/bf16/fp64; NCHW or channels_last read in place (else copied to NCHW); on a
            CUDA device, or on the CPU only under TRITON_INTERPRET=1.
        weight: (C_out, C_in, 1, 1) or (C_out, C_in), a float dtype, x's device.
        in_scale, in_shift: C_in elements each (e.g. (C_in,)), a float dtype, x's device; both or neither. None:
            no input affine.
        bias: C_out elements, a float dtype, x's device. None: no bias.
        in_act: SiLU (True) or identity (False) after the input affine.
        stats: compute mean and var of y; False: both empty.

    Returns:
        y: (B, C_out, H, W) in x's dtype, channels_last when x is (else NCHW).
        mean, var: (C_out,) batch mean and biased variance of y in the accumulation dtype (fp32, fp64 for fp64
            x); (0,) when stats is False.

    Raises:
        TypeError: x, weight, in_scale, in_shift or bias is not a tensor, or not fp32/fp16/bf16/fp64.
        ValueError: x not 4-D; weight not (C_out, C_in, 1, 1) / (C_out, C_in) with x's C_in; an input affine
            vector without C_in elements, or without its partner; bias without C_out elements; a tensor on another
            device than x.
        RuntimeError: Triton cannot be imported; a CPU x without TRITON_INTERPRET=1, a CUDA x with it, or another
            device type (utils.check_device).
    """
    _check_args(x, weight, in_scale, in_shift, bias)
    return _pw_forward(x, weight, in_scale, in_shift, bias, in_act, stats)


@pw_conv_bn.register_fake
def _pw_conv_bn_fake(x, weight, in_scale, in_shift, bias, in_act, stats):
    _check_args(x, weight, in_scale, in_shift, bias)
    N, _, H, W = x.shape
    CO = weight.shape[0]
    sd = acc_dtype(x)
    return (empty_4d((N, CO, H, W), x), x.new_empty(CO if stats else 0, dtype=sd),
            x.new_empty(CO if stats else 0, dtype=sd))


@torch.library.custom_op(op_name("pw_conv_bn_backward"), mutates_args=())
def pw_conv_bn_backward(grad_y: Optional[Tensor], grad_mean: Optional[Tensor], grad_var: Optional[Tensor],
                        x: Tensor, weight: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor],
                        y: Optional[Tensor], mean: Optional[Tensor], in_act: bool, has_bias: bool, stats: bool
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward of pw_conv_bn: (grad x, grad weight, grad in_scale, grad in_shift, grad bias). With
    g = dL/dy + dmean / M + dvar * 2 (y - mean) / M (M = B H W rows; the statistics' term from the saved y), grad x
    = g @ weight (prologue derivative on the fly) and grad weight = g^T @ a (a recomputed from x): one fused kernel
    where both channel counts fit FUSED_MAX (and its dots and tiles fit the GPU), else two; fp32 partial sums.

    Arguments:
        grad_y: (B, C_out, H, W), the gradient of y, a float dtype, x's device, any strides (copied to NCHW unless
            dense); None or empty: y got no gradient.
        grad_mean, grad_var: (C_out,) gradients reaching mean / var, the accumulation dtype (fp32, fp64 for fp64
            x); one None is taken as zeros, both None: no statistics term.
        x, weight, in_scale, in_shift: the forward's (see pw_conv_bn); x on a CUDA device, or the CPU only under
            TRITON_INTERPRET=1; the rest on x's device; None where the forward had None.
        y: (B, C_out, H, W) the forward's raw output, saved when stats; None otherwise.
        mean: (C_out,) the forward's batch mean (accumulation dtype) when stats; None otherwise.
        in_act: the forward's. has_bias: the forward had a bias (its gradient is returned).
        stats: the forward computed statistics (the statistics term needs y, mean and grad_mean / grad_var).

    Returns:
        grad x: (B, C_in, H, W) in x's dtype, channels_last when x is (else NCHW).
        grad weight: weight's shape and dtype, contiguous.
        grad in_scale, grad in_shift: (C_in,), grad bias: (C_out,), in the accumulation dtype (fp32, fp64 for
            fp64 x; the autograd formula casts them to the parameters' dtypes); (0,) where not applicable. All
            zeros when no gradient arrived or a size is 0.

    Raises:
        No checks of its own (autograd passes the forward's checked tensors).
    """
    return _pw_backward(grad_y, grad_mean, grad_var, x, weight, in_scale, in_shift, y, mean, in_act, has_bias, stats)


@pw_conv_bn_backward.register_fake
def _pw_conv_bn_backward_fake(grad_y, grad_mean, grad_var, x, weight, in_scale, in_shift, y, mean, in_act,
                              has_bias, stats):
    CI, CO = x.shape[1], weight.shape[0]
    sd = acc_dtype(x)
    return (empty_4d(tuple(x.shape), x), torch.empty_like(weight, memory_format=torch.contiguous_format),
            x.new_empty(CI if in_scale is not None else 0, dtype=sd),
            x.new_empty(CI if in_shift is not None else 0, dtype=sd), x.new_empty(CO if has_bias else 0, dtype=sd))


def _pw_conv_bn_setup_context(ctx, inputs, output):
    x, weight, in_scale, in_shift, bias, in_act, stats = inputs
    y, mean, _ = output
    # the raw output is kept only when its statistics feed a BN (in a chain it is the next conv's saved input)
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zero tensor is made for it
    ctx.save_for_backward(x, weight, in_scale, in_shift, y if stats else None, mean if stats else None)
    ctx.cfg = (in_act, bias is not None, stats, None if bias is None else bias.dtype)


def _pw_conv_bn_autograd(ctx, grad_y, grad_mean, grad_var):
    x, weight, in_scale, in_shift, y, mean = ctx.saved_tensors
    in_act, has_bias, stats, bias_dtype = ctx.cfg
    gx, gw, g_s, g_t, g_b = pw_conv_bn_backward(grad_y, grad_mean, grad_var, x, weight, in_scale, in_shift, y, mean,
                                                in_act, has_bias, stats)

    return (gx, gw, grad_like(g_s, in_scale), grad_like(g_t, in_shift),
            (g_b if g_b.dtype == bias_dtype else g_b.to(bias_dtype)) if has_bias else None, None, None)


pw_conv_bn.register_autograd(_pw_conv_bn_autograd, setup_context=_pw_conv_bn_setup_context)
