"""Depthwise kxk conv (k = 3, 5 or 7, stride 1 or 2, padding k // 2) for training, with a BN prologue and epilogue.

    a   = in_act(x * in_scale + in_shift)                   prologue, per input channel, on the fly
    y   = depthwise_conv(a, weight, stride, padding=k // 2)   (zero padding applies to a)
    out = out_act(y * out_scale + out_shift) + residual     epilogue (each part optional); or out = y (raw)
    mean, var = batch mean and biased variance of y per channel (optional)

Op `yolov10_kernels::dw_conv_bn(x, weight, in_scale?, in_shift?, out_scale?, out_shift?, residual?, stride,
in_act, out_act, write_out, stats) -> (out, mean, var)`; `out` is empty when write_out is False (a statistics-only
pass), mean/var are empty when stats is False. Differentiable in x, weight, the four affine vectors and residual.
Acts are SiLU (True) or identity (False).

Forward: one kernel; each program walks a run of tiles of flattened (n, oh, ow) positions for one channel block
and merges per-tile statistics (count, mean, M2) with the parallel-variance formula; the host merges the
per-program partials the same way. Backward: (1) if y is needed (statistics or an epilogue), a kernel recomputes y and writes
the fp32 gradient w.r.t. y, g = dout/dy + dmean/M + dvar * 2 (y - mean) / M (y is never saved); (2) one kernel
over input positions computes grad x (transposed depthwise conv, the prologue derivative applied on the fly, a
recomputed from x) and, for the weight, per-program fp32 partial sums over its run of N x H x W tiles, summed on
the host (a second reduction; no atomics). Inputs may be NCHW, channels_last or any strided layout; outputs
follow channels_last when the input is channels_last, else NCHW. fp32/fp16/bf16 compute in fp32, fp64 in fp64.
On the GPU the k*k taps are an unrolled loop over [positions x channels] tiles (the prologue recomputed per tap);
under the interpreter they are a third tile dimension (TAPS_VEC), many times faster there; tests run both."""
from typing import Optional

import torch

from .utils import (acc_dtype, check_device, check_tensor, conv_out_size, empty, empty_4d, is_channels_last,
                    merge_stats, next_pow2, op_name, partial_stats, split_tiles, strides4, tl, tl_acc, triton,
                    triton_interpreted, vec)

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------------- kernels
if triton is not None:  # without triton the ops import, and their launchers raise (utils.check_device)
    from .utils import load_channel_pair, load_stat_grads, silu_fwd, silu_fwd_bwd, tile_stats_merge

    @triton.jit
    def _dw_conv_tile(x_ptr, w_ptr, n, oh, ow, pmask, c, cmask, s_in, t_in, H, W, sxn, sxc, sxh, sxw,
                      K: tl.constexpr, STRIDE: tl.constexpr, IN_AFFINE: tl.constexpr, IN_ACT: tl.constexpr,
                      ACC: tl.constexpr, TAPS_VEC: tl.constexpr, KK_PAD: tl.constexpr,
                      BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """Raw depthwise conv outputs at output positions (oh, ow) [BLOCK_P] x channels c [BLOCK_C], the prologue
        applied to every input tap on the fly (recomputed per tap instead of staged). TAPS_VEC: the k*k taps as a
        third tile dimension (the interpreter's fast path: few, large ops); else an unrolled loop over taps (GPU)."""
        PAD: tl.constexpr = K // 2
        if TAPS_VEC:
            tap = tl.arange(0, KK_PAD)
            ih = oh[:, None] * STRIDE - PAD + (tap // K)[None, :]
            iw = ow[:, None] * STRIDE - PAD + (tap % K)[None, :]
            ok = pmask[:, None] & (tap < K * K)[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            m3 = ok[:, :, None] & cmask[None, None, :]
            xp = x_ptr + n.to(tl.int64)[:, None, None] * sxn + c[None, None, :].to(tl.int64) * sxc \
                + ih[:, :, None] * sxh + iw[:, :, None] * sxw
            xv = tl.load(xp, mask=m3, other=0.0).to(ACC)
            if IN_AFFINE:
                xv = xv * s_in[None, None, :] + t_in[None, None, :]
            if IN_ACT:
                xv = silu_fwd(xv)
            if IN_AFFINE or IN_ACT:
                xv = tl.where(m3, xv, 0.0)
            wv = tl.load(w_ptr + c[None, :] * (K * K) + tap[:, None], mask=(tap < K * K)[:, None] & cmask[None, :],
                         other=0.0).to(ACC)
            return tl.sum(xv * wv[None, :, :], axis=1)
        acc = tl.zeros([BLOCK_P, BLOCK_C], ACC)
        xb = x_ptr + n.to(tl.int64)[:, None] * sxn + c[None, :].to(tl.int64) * sxc
        for kh in tl.static_range(K):
            ih = oh * STRIDE - PAD + kh
            hok = pmask & (ih >= 0) & (ih < H)
            for kw in tl.static_range(K):
                iw = ow * STRIDE - PAD + kw
                m = (hok & (iw >= 0) & (iw < W))[:, None] & cmask[None, :]
                xv = tl.load(xb + ih[:, None] * sxh + iw[:, None] * sxw, mask=m, other=0.0).to(ACC)
                if IN_AFFINE:
                    xv = xv * s_in[None, :] + t_in[None, :]
                if IN_ACT:
                    xv = silu_fwd(xv)
                if IN_AFFINE or IN_ACT:
                    xv = tl.where(m, xv, 0.0)  # the conv zero-pads the activation, not the raw input
                wv = tl.load(w_ptr + c * (K * K) + (kh * K + kw), mask=cmask, other=0.0).to(ACC)
                acc += xv * wv[None, :]
        return acc

    @triton.jit
    def _dw_fwd_kernel(x_ptr, w_ptr, is_ptr, it_ptr, os_ptr, ot_ptr, r_ptr, y_ptr, pcnt_ptr, pmean_ptr, pm2_ptr,
                       C, H, W, OH, OW, NP, tiles_per_prog,
                       sxn, sxc, sxh, sxw, syn, syc, syh, syw, srn, src, srh, srw,
                       K: tl.constexpr, STRIDE: tl.constexpr, IN_AFFINE: tl.constexpr, IN_ACT: tl.constexpr,
                       OUT_AFFINE: tl.constexpr, OUT_ACT: tl.constexpr, HAS_RES: tl.constexpr,
                       WRITE_OUT: tl.constexpr, STATS: tl.constexpr, ACC: tl.constexpr,
                       TAPS_VEC: tl.constexpr, KK_PAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        pid = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        s_in, t_in = load_channel_pair(is_ptr, it_ptr, c, cmask, IN_AFFINE, ACC, BLOCK_C)
        s_out, t_out = load_channel_pair(os_ptr, ot_ptr, c, cmask, OUT_AFFINE, ACC, BLOCK_C)
        n_run = tl.zeros([BLOCK_C], ACC)
        mean_run = tl.zeros([BLOCK_C], ACC)
        m2_run = tl.zeros([BLOCK_C], ACC)
        OHW = OH * OW
        for i in range(tiles_per_prog):
            pf = (pid * tiles_per_prog + i) * BLOCK_P + tl.arange(0, BLOCK_P)  # flat (n, oh, ow) positions
            pmask = pf < NP
            n = pf // OHW
            p = pf % OHW
            oh = p // OW
            ow = p % OW
            m2d = pmask[:, None] & cmask[None, :]
            acc = _dw_conv_tile(x_ptr, w_ptr, n, oh, ow, pmask, c, cmask, s_in, t_in, H, W, sxn, sxc, sxh, sxw,
                                K, STRIDE, IN_AFFINE, IN_ACT, ACC, TAPS_VEC, KK_PAD, BLOCK_P, BLOCK_C)
            if STATS:
                nb = tl.sum(pmask.to(ACC), axis=0)
                n_run, mean_run, m2_run = tile_stats_merge(n_run, mean_run, m2_run, acc, m2d, nb)
            if WRITE_OUT:
                v = acc
                if OUT_AFFINE:
                    v = v * s_out[None, :] + t_out[None, :]
                if OUT_ACT:
                    v = silu_fwd(v)
                if HAS_RES:
                    rp = r_ptr + n.to(tl.int64)[:, None] * srn + c[None, :].to(tl.int64) * src + oh[:, None] * srh + ow[:, None] * srw
                    v += tl.load(rp, mask=m2d, other=0.0).to(ACC)
                yp = y_ptr + n.to(tl.int64)[:, None] * syn + c[None, :].to(tl.int64) * syc + oh[:, None] * syh + ow[:, None] * syw
                tl.store(yp, v.to(y_ptr.dtype.element_ty), mask=m2d)
        if STATS:
            tl.store(pcnt_ptr + pid + tl.arange(0, BLOCK_C) * 0, n_run, mask=tl.arange(0, BLOCK_C) == 0)
            tl.store(pmean_ptr + pid * C + c, mean_run, mask=cmask)
            tl.store(pm2_ptr + pid * C + c, m2_run, mask=cmask)

    @triton.jit
    def _dw_grad_y_kernel(x_ptr, w_ptr, is_ptr, it_ptr, os_ptr, ot_ptr, go_ptr, mean_ptr, gmean_ptr, gvar_ptr,
                          g_ptr, pgos_ptr, pgot_ptr, inv_m,
                          C, H, W, OH, OW, NP, tiles_per_prog,
                          sxn, sxc, sxh, sxw, son, soc, soh, sow, sgn, sgc, sgh, sgw,
                          K: tl.constexpr, STRIDE: tl.constexpr, IN_AFFINE: tl.constexpr, IN_ACT: tl.constexpr,
                          OUT_AFFINE: tl.constexpr, OUT_ACT: tl.constexpr, HAS_GO: tl.constexpr, STATS: tl.constexpr,
                          ACC: tl.constexpr, TAPS_VEC: tl.constexpr, KK_PAD: tl.constexpr,
                          BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """g = d loss / d y with y recomputed: through the epilogue (affine + act) and the batch statistics."""
        pid = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        s_in, t_in = load_channel_pair(is_ptr, it_ptr, c, cmask, IN_AFFINE, ACC, BLOCK_C)
        s_out, t_out = load_channel_pair(os_ptr, ot_ptr, c, cmask, OUT_AFFINE, ACC, BLOCK_C)
        mu, gm, gv2 = load_stat_grads(mean_ptr, gmean_ptr, gvar_ptr, c, cmask, inv_m, STATS, ACC, BLOCK_C)
        gos = tl.zeros([BLOCK_C], ACC)
        got = tl.zeros([BLOCK_C], ACC)
        OHW = OH * OW
        for i in range(tiles_per_prog):
            pf = (pid * tiles_per_prog + i) * BLOCK_P + tl.arange(0, BLOCK_P)  # flat (n, oh, ow) positions
            pmask = pf < NP
            n = pf // OHW
            p = pf % OHW
            oh = p // OW
            ow = p % OW
            m2d = pmask[:, None] & cmask[None, :]
            y = _dw_conv_tile(x_ptr, w_ptr, n, oh, ow, pmask, c, cmask, s_in, t_in, H, W, sxn, sxc, sxh, sxw,
                              K, STRIDE, IN_AFFINE, IN_ACT, ACC, TAPS_VEC, KK_PAD, BLOCK_P, BLOCK_C)
            gy = tl.zeros([BLOCK_P, BLOCK_C], ACC)
            if HAS_GO:
                gp = go_ptr + n.to(tl.int64)[:, None] * son + c[None, :].to(tl.int64) * soc + oh[:, None] * soh + ow[:, None] * sow
                gy = tl.load(gp, mask=m2d, other=0.0).to(ACC)
                if OUT_ACT:
                    v = y
                    if OUT_AFFINE:
                        v = y * s_out[None, :] + t_out[None, :]
                    _, dact = silu_fwd_bwd(v)
                    gy = gy * dact
                if OUT_AFFINE:
                    gy = tl.where(m2d, gy, 0.0)
                    gos += tl.sum(gy * y, axis=0)
                    got += tl.sum(gy, axis=0)
                    gy = gy * s_out[None, :]
            if STATS:
                gy += gm[None, :] + gv2[None, :] * (y - mu[None, :])
            gptr = g_ptr + n.to(tl.int64)[:, None] * sgn + c[None, :].to(tl.int64) * sgc + oh[:, None] * sgh + ow[:, None] * sgw
            tl.store(gptr, gy, mask=m2d)
        if OUT_AFFINE:
            tl.store(pgos_ptr + pid * C + c, gos, mask=cmask)
            tl.store(pgot_ptr + pid * C + c, got, mask=cmask)

    @triton.jit
    def _dw_bwd_taps_loop(g_ptr, w_ptr, n, ih, iw, qmask, c, cmask, kk, a, dw_acc, OH, OW, sgn, sgc, sgh, sgw,
                          K: tl.constexpr, STRIDE: tl.constexpr, ACC: tl.constexpr, KK_PAD: tl.constexpr,
                          BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """GPU path of the backward tap loop: grad a at input positions (ih, iw) = sum over the taps that read them of
        g(out) * w(tap), and dw_acc[tap] += sum over positions of g(out) * a(in)."""
        PAD: tl.constexpr = K // 2
        ga = tl.zeros([BLOCK_P, BLOCK_C], ACC)
        gb = g_ptr + n.to(tl.int64)[:, None] * sgn + c[None, :].to(tl.int64) * sgc
        for kh in tl.static_range(K):
            th = ih + PAD - kh
            if STRIDE == 1:
                oh = th
                hok = qmask & (th >= 0) & (th < OH)
            else:
                oh = th // STRIDE
                hok = qmask & (th >= 0) & ((th % STRIDE) == 0) & (oh < OH)
            for kw in tl.static_range(K):
                tw = iw + PAD - kw
                if STRIDE == 1:
                    ow = tw
                    wok = (tw >= 0) & (tw < OW)
                else:
                    ow = tw // STRIDE
                    wok = (tw >= 0) & ((tw % STRIDE) == 0) & (ow < OW)
                m = (hok & wok)[:, None] & cmask[None, :]
                gv = tl.load(gb + oh[:, None] * sgh + ow[:, None] * sgw, mask=m, other=0.0).to(ACC)
                wv = tl.load(w_ptr + c * (K * K) + (kh * K + kw), mask=cmask, other=0.0).to(ACC)
                ga += gv * wv[None, :]
                contrib = tl.sum(gv * a, axis=0)
                dw_acc += tl.where(kk[:, None] == (kh * K + kw), contrib[None, :], 0.0)
        return ga, dw_acc

    @triton.jit
    def _dw_bwd_kernel(x_ptr, w_ptr, is_ptr, it_ptr, g_ptr, gx_ptr, pdw_ptr, pgs_ptr, pgt_ptr,
                       C, H, W, OH, OW, NP, tiles_per_prog,
                       sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw, sdn, sdc, sdh, sdw,
                       K: tl.constexpr, STRIDE: tl.constexpr, IN_AFFINE: tl.constexpr, IN_ACT: tl.constexpr,
                       ACC: tl.constexpr, TAPS_VEC: tl.constexpr, KK_PAD: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """Over input positions: grad x = prologue'(x) * sum_taps g(out of tap) * w(tap), and per-program partial
        weight gradients sum g(out) * a(in) (a recomputed from x) and prologue-parameter gradients."""
        PAD: tl.constexpr = K // 2
        pid = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        kk = tl.arange(0, KK_PAD)
        s_in, t_in = load_channel_pair(is_ptr, it_ptr, c, cmask, IN_AFFINE, ACC, BLOCK_C)
        dw_acc = tl.zeros([KK_PAD, BLOCK_C], ACC)
        gs = tl.zeros([BLOCK_C], ACC)
        gt = tl.zeros([BLOCK_C], ACC)
        HW = H * W
        for i in range(tiles_per_prog):
            qf = (pid * tiles_per_prog + i) * BLOCK_P + tl.arange(0, BLOCK_P)  # flat (n, ih, iw) positions
            qmask = qf < NP
            n = qf // HW
            q = qf % HW
            ih = q // W
            iw = q % W
            m2d = qmask[:, None] & cmask[None, :]
            xp = x_ptr + n.to(tl.int64)[:, None] * sxn + c[None, :].to(tl.int64) * sxc + ih[:, None] * sxh + iw[:, None] * sxw
            xv = tl.load(xp, mask=m2d, other=0.0).to(ACC)
            u = xv
            if IN_AFFINE:
                u = xv * s_in[None, :] + t_in[None, :]
            a = u
            da = tl.zeros([BLOCK_P, BLOCK_C], ACC) + 1.0
            if IN_ACT:
                a, da = silu_fwd_bwd(u)
            a = tl.where(m2d, a, 0.0)
            if TAPS_VEC:
                th = ih[:, None] + PAD - (kk // K)[None, :]
                tw = iw[:, None] + PAD - (kk % K)[None, :]
                if STRIDE == 1:
                    oh = th
                    ow = tw
                    ok = (th >= 0) & (th < OH) & (tw >= 0) & (tw < OW)
                else:
                    oh = th // STRIDE
                    ow = tw // STRIDE
                    ok = (th >= 0) & ((th % STRIDE) == 0) & (oh < OH) & (tw >= 0) & ((tw % STRIDE) == 0) & (ow < OW)
                ok = ok & qmask[:, None] & (kk < K * K)[None, :]
                m3 = ok[:, :, None] & cmask[None, None, :]
                gp = g_ptr + n.to(tl.int64)[:, None, None] * sgn + c[None, None, :].to(tl.int64) * sgc \
                    + oh[:, :, None] * sgh + ow[:, :, None] * sgw
                gv = tl.load(gp, mask=m3, other=0.0).to(ACC)
                wv = tl.load(w_ptr + c[None, :] * (K * K) + kk[:, None], mask=(kk < K * K)[:, None] & cmask[None, :],
                             other=0.0).to(ACC)
                ga = tl.sum(gv * wv[None, :, :], axis=1)
                dw_acc += tl.sum(gv * a[:, None, :], axis=0)
            else:
                ga, dw_acc = _dw_bwd_taps_loop(g_ptr, w_ptr, n, ih, iw, qmask, c, cmask, kk, a, dw_acc, OH, OW, sgn, sgc,
                                               sgh, sgw, K, STRIDE, ACC, KK_PAD, BLOCK_P, BLOCK_C)
            gu = ga
            if IN_ACT:
                gu = ga * da
            if IN_AFFINE:
                gu = tl.where(m2d, gu, 0.0)
                gs += tl.sum(gu * xv, axis=0)
                gt += tl.sum(gu, axis=0)
                gu = gu * s_in[None, :]
            dp = gx_ptr + n.to(tl.int64)[:, None] * sdn + c[None, :].to(tl.int64) * sdc + ih[:, None] * sdh + iw[:, None] * sdw
            tl.store(dp, gu.to(gx_ptr.dtype.element_ty), mask=m2d)
        KK: tl.constexpr = K * K
        tl.store(pdw_ptr + pid * (KK * C) + kk[:, None] * C + c[None, :], dw_acc,
                 mask=(kk[:, None] < KK) & cmask[None, :])
        if IN_AFFINE:
            tl.store(pgs_ptr + pid * C + c, gs, mask=cmask)
            tl.store(pgt_ptr + pid * C + c, gt, mask=cmask)


# ---------------------------------------------------------------------------------------------------- launchers
# Tests set this to run the GPU kernels' unrolled tap loops under the interpreter too (by default the interpreter
# takes the vectorised-taps path, which is many times faster there).
TAP_LOOP_ON_CPU = False


def _tapsvec(x):
    return x.device.type != "cuda" and not TAP_LOOP_ON_CPU


def _blocks(C, spatial, x, K=3):
    """(BLOCK_P, BLOCK_C, num_warps). channels_last: wide channel blocks (contiguous); NCHW: wide spatial blocks."""
    if triton_interpreted() or x.device.type != "cuda":
        # the interpreter pays per program and per op, not per element: few, large tiles
        bc = min(max(next_pow2(C), 2), 64)
        cap = 256 if not _tapsvec(x) else max(16, (1 << 18) // (next_pow2(K * K) * bc))
        return min(max(next_pow2(spatial), 16), cap), bc, 4
    if is_channels_last(x):
        bc = min(max(next_pow2(C), 8), 64)
        bp = 64 if bc == 64 else 128
    else:
        bc, bp = min(max(next_pow2(C), 2), 4), 256
    if x.dtype == torch.float64:  # fp64 (gradcheck) tiles: keep register use and compile time small
        bp = max(16, min(bp, 1024 // bc))
    return bp, bc, 4


def _check_args(x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride):
    check_tensor("x", x, dim=4)
    check_device(x)
    check_tensor("weight", weight, device=x.device)
    C = x.shape[1]
    if weight.dim() not in (3, 4) or weight.shape[0] != C or (weight.dim() == 4 and weight.shape[1] != 1) \
            or weight.shape[-1] != weight.shape[-2] or weight.shape[-1] not in (3, 5, 7):
        raise ValueError(f"depthwise weight must be (C, 1, k, k) with C = x's {C} channels and k in 3, 5, 7; "
                         f"got weight {tuple(weight.shape)} for x {tuple(x.shape)}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    for name, t in (("in_scale", in_scale), ("in_shift", in_shift), ("out_scale", out_scale), ("out_shift", out_shift)):
        if t is not None:
            check_tensor(name, t, device=x.device)
            if t.numel() != C:
                raise ValueError(f"{name} must have {C} elements (one per channel of x), got {t.numel()}")
    if (in_scale is None) != (in_shift is None) or (out_scale is None) != (out_shift is None):
        raise ValueError("scale and shift must be given together")
    if residual is not None:
        check_tensor("residual", residual, device=x.device, dim=4)


def _dw_forward(x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride, in_act, out_act,
                write_out, stats):
    N, C, H, W = x.shape
    K = weight.shape[-1]
    OH, OW = conv_out_size(H, K, stride), conv_out_size(W, K, stride)
    if residual is not None and tuple(residual.shape) != (N, C, OH, OW):
        raise ValueError(f"residual must have the output's shape {(N, C, OH, OW)}, got {tuple(residual.shape)}")
    sd = acc_dtype(x)
    out = empty_4d((N, C, OH, OW), x) if write_out else x.new_empty(0)
    if N * OH * OW == 0 or C == 0:
        return out, x.new_zeros(C if stats else 0, dtype=sd), x.new_zeros(C if stats else 0, dtype=sd)
    w = weight.detach().reshape(C, K * K).contiguous()
    NP = N * OH * OW
    BP, BC, nw = _blocks(C, NP, x, K)
    cblk = triton.cdiv(C, BC)
    splits, per = split_tiles(triton.cdiv(NP, BP), cblk, x.device)
    pcnt, pmean, pm2 = partial_stats(splits, C, x, sd, stats)
    si, ti, so, to = (vec(t, sd) for t in (in_scale, in_shift, out_scale, out_shift))
    dummy = pcnt
    _dw_fwd_kernel[(splits, cblk)](
        x, w, si if si is not None else dummy, ti if ti is not None else dummy,
        so if so is not None else dummy, to if to is not None else dummy,
        residual if residual is not None else dummy, out if write_out else dummy, pcnt, pmean, pm2,
        C, H, W, OH, OW, NP, per,
        *x.stride(), *strides4(out), *strides4(residual),
        K=K, STRIDE=stride, IN_AFFINE=si is not None, IN_ACT=bool(in_act), OUT_AFFINE=so is not None,
        OUT_ACT=bool(out_act), HAS_RES=residual is not None, WRITE_OUT=bool(write_out), STATS=bool(stats),
        ACC=tl_acc(x.dtype), TAPS_VEC=_tapsvec(x), KK_PAD=next_pow2(K * K), BLOCK_P=BP, BLOCK_C=BC, num_warps=nw)
    if stats:
        mean, var = merge_stats(pcnt, pmean, pm2)
    else:
        mean, var = x.new_empty(0, dtype=sd), x.new_empty(0, dtype=sd)
    return out, mean, var


def _dw_backward(grad_out, grad_mean, grad_var, x, weight, in_scale, in_shift, out_scale, out_shift, mean,
                 stride, in_act, out_act, write_out, stats):
    N, C, H, W = x.shape
    K = weight.shape[-1]
    OH, OW = conv_out_size(H, K, stride), conv_out_size(W, K, stride)
    sd = acc_dtype(x)
    has_go = bool(write_out) and grad_out is not None and grad_out.numel() > 0
    stats = bool(stats) and grad_mean is not None and grad_var is not None and grad_mean.numel() > 0
    gx = empty_4d((N, C, H, W), x)

    def zeros_or_empty(t):  # distinct tensors: a custom op's outputs may not alias each other
        return torch.zeros(C if t is not None else 0, dtype=sd, device=x.device)
    g_is, g_it, g_os, g_ot = (zeros_or_empty(t) for t in (in_scale, in_shift, out_scale, out_shift))
    if (not has_go and not stats) or N * OH * OW == 0 or C == 0:
        return gx.zero_(), torch.zeros_like(weight), g_is, g_it, g_os, g_ot
    w = weight.detach().reshape(C, K * K).contiguous()
    si, ti, so, to = (vec(t, sd) for t in (in_scale, in_shift, out_scale, out_shift))
    acc = tl_acc(x.dtype)
    dummy = x.new_empty(1, dtype=sd)
    if stats or so is not None or (out_act and has_go):
        # d loss / d y, recomputing y (never saved): through the epilogue and the batch statistics
        g = empty_4d((N, C, OH, OW), x, dtype=sd)
        NP = N * OH * OW
        BP, BC, nw = _blocks(C, NP, x, K)
        cblk = triton.cdiv(C, BC)
        splits, per = split_tiles(triton.cdiv(NP, BP), cblk, x.device)
        pgos = empty((splits, C), x, sd) if so is not None else dummy
        pgot = empty((splits, C), x, sd) if so is not None else dummy
        _dw_grad_y_kernel[(splits, cblk)](
            x, w, si if si is not None else dummy, ti if ti is not None else dummy,
            so if so is not None else dummy, to if to is not None else dummy,
            grad_out if has_go else dummy, vec(mean, sd) if stats else dummy,
            vec(grad_mean, sd) if stats else dummy, vec(grad_var, sd) if stats else dummy,
            g, pgos, pgot, 1.0 / (N * OH * OW),
            C, H, W, OH, OW, NP, per,
            *x.stride(), *(grad_out.stride() if has_go else (0, 0, 0, 0)), *g.stride(),
            K=K, STRIDE=stride, IN_AFFINE=si is not None, IN_ACT=bool(in_act), OUT_AFFINE=so is not None,
            OUT_ACT=bool(out_act), HAS_GO=has_go, STATS=stats, ACC=acc, TAPS_VEC=_tapsvec(x),
            KK_PAD=next_pow2(K * K), BLOCK_P=BP, BLOCK_C=BC, num_warps=nw)
        if so is not None:
            g_os, g_ot = pgos.sum(0), pgot.sum(0)
    else:
        g = grad_out  # any strides (even expanded ones) are read as they are
    NP = N * H * W
    BP, BC, nw = _blocks(C, NP, x, K)
    cblk = triton.cdiv(C, BC)
    splits, per = split_tiles(triton.cdiv(NP, BP), cblk, x.device)
    pdw = empty((splits, K * K, C), x, sd)
    pgs = empty((splits, C), x, sd) if si is not None else dummy
    pgt = empty((splits, C), x, sd) if si is not None else dummy
    _dw_bwd_kernel[(splits, cblk)](
        x, w, si if si is not None else dummy, ti if ti is not None else dummy, g, gx, pdw, pgs, pgt,
        C, H, W, OH, OW, NP, per,
        *x.stride(), *g.stride(), *gx.stride(),
        K=K, STRIDE=stride, IN_AFFINE=si is not None, IN_ACT=bool(in_act), ACC=acc, TAPS_VEC=_tapsvec(x),
        KK_PAD=next_pow2(K * K), BLOCK_P=BP, BLOCK_C=BC, num_warps=nw)
    gw = pdw.sum(0).t().contiguous().reshape(weight.shape).to(weight.dtype)
    if si is not None:
        g_is, g_it = pgs.sum(0), pgt.sum(0)
    return gx, gw, g_is, g_it, g_os, g_ot


# ---------------------------------------------------------------------------------------------------- ops
@torch.library.custom_op(op_name("dw_conv_bn"), mutates_args=())
def dw_conv_bn(x: Tensor, weight: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor],
               out_scale: Optional[Tensor], out_shift: Optional[Tensor], residual: Optional[Tensor],
               stride: int, in_act: bool, out_act: bool, write_out: bool, stats: bool
               ) -> tuple[Tensor, Tensor, Tensor]:
    """See the module docstring. Returns (out, mean, biased var); empty tensors for what was not asked for."""
    _check_args(x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride)
    return _dw_forward(x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride, in_act, out_act,
                       write_out, stats)


@dw_conv_bn.register_fake
def _dw_conv_bn_fake(x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride, in_act, out_act,
                     write_out, stats):
    _check_args(x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride)
    N, C, H, W = x.shape
    K = weight.shape[-1]
    sd = acc_dtype(x)
    out = empty_4d((N, C, conv_out_size(H, K, stride), conv_out_size(W, K, stride)), x) if write_out else x.new_empty(0)
    return out, x.new_empty(C if stats else 0, dtype=sd), x.new_empty(C if stats else 0, dtype=sd)


@torch.library.custom_op(op_name("dw_conv_bn_backward"), mutates_args=())
def dw_conv_bn_backward(grad_out: Optional[Tensor], grad_mean: Optional[Tensor], grad_var: Optional[Tensor],
                        x: Tensor, weight: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor],
                        out_scale: Optional[Tensor], out_shift: Optional[Tensor], mean: Optional[Tensor],
                        stride: int, in_act: bool, out_act: bool, write_out: bool, stats: bool
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad x, grad weight, grad in_scale, grad in_shift, grad out_scale, grad out_shift); the affine-vector
    gradients are fp32 (fp64 for fp64 x), empty where that vector was not given."""
    return _dw_backward(grad_out, grad_mean, grad_var, x, weight, in_scale, in_shift, out_scale, out_shift, mean,
                        stride, in_act, out_act, write_out, stats)


@dw_conv_bn_backward.register_fake
def _dw_conv_bn_backward_fake(grad_out, grad_mean, grad_var, x, weight, in_scale, in_shift, out_scale, out_shift,
                              mean, stride, in_act, out_act, write_out, stats):
    C = x.shape[1]
    sd = acc_dtype(x)

    def vec(t):
        return x.new_empty(C if t is not None else 0, dtype=sd)
    return (empty_4d(tuple(x.shape), x), torch.empty_like(weight, memory_format=torch.contiguous_format),
            vec(in_scale), vec(in_shift), vec(out_scale), vec(out_shift))


def _setup_context(ctx, inputs, output):
    x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride, in_act, out_act, write_out, stats = inputs
    _, mean, _ = output
    # only the input and per-channel vectors: y is recomputed in backward, never saved
    ctx.save_for_backward(x, weight, in_scale, in_shift, out_scale, out_shift, mean if stats else None)
    ctx.cfg = (stride, in_act, out_act, write_out, stats, residual is not None)


def _backward(ctx, grad_out, grad_mean, grad_var):
    x, weight, in_scale, in_shift, out_scale, out_shift, mean = ctx.saved_tensors
    stride, in_act, out_act, write_out, stats, has_res = ctx.cfg
    gx, gw, g_is, g_it, g_os, g_ot = dw_conv_bn_backward(
        grad_out, grad_mean, grad_var, x, weight, in_scale, in_shift, out_scale, out_shift, mean,
        stride, in_act, out_act, write_out, stats)

    def cast(g, t):
        return None if t is None else g.to(t.dtype).reshape(t.shape)
    return (gx, gw, cast(g_is, in_scale), cast(g_it, in_shift), cast(g_os, out_scale), cast(g_ot, out_shift),
            grad_out if has_res else None, None, None, None, None, None)


dw_conv_bn.register_autograd(_backward, setup_context=_setup_context)
