"""Depthwise kxk conv (k = 3, 5 or 7, stride 1 or 2, padding k // 2) for training, with a BN prologue and epilogue.

    a   = in_act(x * in_scale + in_shift)                   prologue, per input channel, on the fly
    y   = depthwise_conv(a, weight, stride, padding=k // 2)   (zero padding applies to a)
    out = out_act(y * out_scale + out_shift) + residual     epilogue (each part optional); or out = y (raw)
    mean, var = batch mean and biased variance of y per channel (optional)

Op `yolov10_kernels::dw_conv_bn(x, weight, in_scale?, in_shift?, out_scale?, out_shift?, residual?, stride,
in_act, out_act, write_out, stats) -> (out, mean, var)`; `out` is empty when write_out is False (a statistics-only
pass), mean/var are empty when stats is False. Differentiable in x, weight, the four affine vectors and residual.
Acts are SiLU (True) or identity (False).

Op `yolov10_kernels::dw_conv_bn_act(...)` (`dw_conv_bn_act_train` for nn.BatchNorm2d / BatchNormSpec): a chain's
last depthwise layer with its BN on batch statistics in one op: statistics pass, BN affine and running-statistics
update, epilogue pass; one backward (see the section at the end).

Forward: one kernel; each program walks a run of output tiles of one channel block and merges per-tile statistics
(count, mean, M2) with the parallel-variance formula; one small kernel merges the per-program partials the same
way (utils.finish_stats). On the GPU a tile is a TILE_H x TILE_W block of one image: its input region is read
once, the prologue applied once per element, and staged in the program's own scratch slot (L1/L2), from which
the k*k taps read (kernel rows a runtime loop, columns unrolled: the fully unrolled 7x7 spills); under the
interpreter a tile is a run of flat positions and the taps a third tile dimension (TAPS_VEC), many times faster
there; tests run both. Backward: (1) if y is needed (statistics or an epilogue), a kernel recomputes y (the same
staged tiles) and writes the fp32 gradient w.r.t. y, g = dout/dy + dmean/M + dvar * 2 (y - mean) / M, unless y
is the op's raw output with statistics (a chain's inner depthwise layer): that y is the next conv's input, saved
anyway, and (2) adds the statistics' term as it reads dout at each tap, with no pass and no g tensor;
(2) one kernel over input positions computes grad x (transposed depthwise conv, the prologue derivative
applied once per element) and, for the weight, per-program fp32 partial sums (a partial row per tap, in L1/L2),
summed on the device in a fixed order (deterministic; no atomics). Inputs may be NCHW, channels_last or any
strided layout; outputs follow channels_last when the input is channels_last, else NCHW. fp32/fp16/bf16 compute
in fp32 (staged activations in the input's dtype, as eager stores them), fp64 in fp64. Block sizes and warps
come from ptxas on sm_90a (bench.static): no variant spills."""
import math
from dataclasses import dataclass
from typing import Optional

import torch

from .batchnorm import affine_from_stats, affine_grads
from .utils import (acc_dtype, check_device, check_tensor, conv_out_size, empty, empty_4d, finish_stats, grad_like,
                    is_channels_last, next_pow2, op_name, partial_stats, split_tiles, stat_grads, strides4,
                    sum_partials, tl, tl_acc, triton, triton_interpreted, vec)

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------------- kernels
if triton is not None:  # without triton the ops import, and their launchers raise (utils.check_device)
    from .utils import (load_channel_pair, load_stat_grads, silu_fwd, silu_fwd_bwd, store_partial_stats,
                        tile_stats_merge)

    # what changes with the batch or image size is not specialised on: no recompile for a new size
    VARYING = ["N", "H", "W", "OH", "OW", "NP", "NT", "tiles_per_prog", "slot"]

    @triton.jit
    def _tile_positions(t, NT, N, OH, OW, TAPS_VEC: tl.constexpr, TILE_W: tl.constexpr, BLOCK_P: tl.constexpr):
        """Output positions (n, oh, ow, mask) [BLOCK_P] of tile t, and the tile's image and origin (n0, oh0, ow0).
        TAPS_VEC: BLOCK_P consecutive flat (n, oh, ow) positions; else a TILE_H x TILE_W block of one image, whose
        input region the staged conv reads once."""
        p = tl.arange(0, BLOCK_P)
        if TAPS_VEC:
            pf = t * BLOCK_P + p
            n = pf // (OH * OW)
            q = pf % (OH * OW)
            return n, q // OW, q % OW, pf < N * OH * OW, 0, 0, 0
        TILE_H: tl.constexpr = BLOCK_P // TILE_W
        tiles_w = tl.cdiv(OW, TILE_W)
        per_image = tl.cdiv(OH, TILE_H) * tiles_w
        n0 = t // per_image
        oh0 = (t % per_image) // tiles_w * TILE_H
        ow0 = (t % per_image) % tiles_w * TILE_W
        oh = oh0 + p // TILE_W
        ow = ow0 + p % TILE_W
        return n0 + p * 0, oh, ow, (oh < OH) & (ow < OW) & (t < NT), n0, oh0, ow0

    @triton.jit
    def _dw_conv_tile(x_ptr, w_ptr, scr_ptr, n, oh, ow, pmask, n0, oh0, ow0, c, cmask, s_in, t_in, H, W,
                      sxn, sxc, sxh, sxw, K: tl.constexpr, STRIDE: tl.constexpr, IN_AFFINE: tl.constexpr,
                      IN_ACT: tl.constexpr, ACC: tl.constexpr, TAPS_VEC: tl.constexpr, KK_PAD: tl.constexpr,
                      TILE_W: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """Raw depthwise conv outputs at output positions (oh, ow) [BLOCK_P] x channels c [BLOCK_C] of the
        prologue-activated input. GPU: the tile's input region (its outputs' receptive field) is activated once
        per element and staged in the program's own scratch slot (L1/L2), then the taps read it back: one
        BN + SiLU per input element instead of one per tap (k*k times as many exp). TAPS_VEC (the
        interpreter's fast path): the k*k taps as a third tile dimension, the prologue applied per tap."""
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
        TILE_H: tl.constexpr = BLOCK_P // TILE_W
        EW: tl.constexpr = (TILE_W - 1) * STRIDE + K
        EH: tl.constexpr = (TILE_H - 1) * STRIDE + K
        cl = tl.arange(0, BLOCK_C)
        xb = x_ptr + n0.to(tl.int64) * sxn + c.to(tl.int64) * sxc
        for e0 in range(0, EH * EW, BLOCK_P):  # stage the region in [BLOCK_P x BLOCK_C] chunks (a runtime loop)
            e = e0 + tl.arange(0, BLOCK_P)
            ih = oh0 * STRIDE - PAD + e // EW
            iw = ow0 * STRIDE - PAD + e % EW
            m = ((e < EH * EW) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))[:, None] & cmask[None, :]
            xv = tl.load(xb[None, :] + ih[:, None] * sxh + iw[:, None] * sxw, mask=m, other=0.0).to(ACC)
            if IN_AFFINE:
                xv = xv * s_in[None, :] + t_in[None, :]
            if IN_ACT:
                xv = silu_fwd(xv)
            xv = tl.where(m, xv, 0.0)  # the conv zero-pads the activation, not the raw input
            tl.store(scr_ptr + e[:, None] * BLOCK_C + cl[None, :], xv.to(scr_ptr.dtype.element_ty),
                     mask=(e < EH * EW)[:, None])
        tl.debug_barrier()  # the whole region is staged before any tap reads it
        p = tl.arange(0, BLOCK_P)
        base = (p // TILE_W) * (STRIDE * EW) + (p % TILE_W) * STRIDE
        acc = tl.zeros([BLOCK_P, BLOCK_C], ACC)
        for kh in range(K):  # a runtime loop over kernel rows: unrolling all k*k taps spills at 7x7
            for kw in tl.static_range(K):
                v = tl.load(scr_ptr + (base + kh * EW + kw)[:, None] * BLOCK_C + cl[None, :], mask=pmask[:, None],
                            other=0.0).to(ACC)
                wv = tl.load(w_ptr + c * (K * K) + (kh * K + kw), mask=cmask, other=0.0).to(ACC)
                acc += v * wv[None, :]
        tl.debug_barrier()  # every tap has read the slot before the next tile restages it
        return acc

    @triton.jit(do_not_specialize=VARYING)
    def _dw_fwd_kernel(x_ptr, w_ptr, is_ptr, it_ptr, os_ptr, ot_ptr, r_ptr, y_ptr, pcnt_ptr, pmean_ptr, pm2_ptr,
                       scr_ptr, C, N, H, W, OH, OW, NT, tiles_per_prog, slot,
                       sxn, sxc, sxh, sxw, syn, syc, syh, syw, srn, src, srh, srw,
                       K: tl.constexpr, STRIDE: tl.constexpr, IN_AFFINE: tl.constexpr, IN_ACT: tl.constexpr,
                       OUT_AFFINE: tl.constexpr, OUT_ACT: tl.constexpr, HAS_RES: tl.constexpr,
                       WRITE_OUT: tl.constexpr, STATS: tl.constexpr, ACC: tl.constexpr,
                       TAPS_VEC: tl.constexpr, KK_PAD: tl.constexpr, TILE_W: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        pid = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        s_in, t_in = load_channel_pair(is_ptr, it_ptr, c, cmask, IN_AFFINE, ACC, BLOCK_C)
        s_out, t_out = load_channel_pair(os_ptr, ot_ptr, c, cmask, OUT_AFFINE, ACC, BLOCK_C)
        n_run = tl.zeros([BLOCK_C], ACC)
        mean_run = tl.zeros([BLOCK_C], ACC)
        m2_run = tl.zeros([BLOCK_C], ACC)
        scr = scr_ptr + (tl.program_id(1) * tl.num_programs(0) + pid).to(tl.int64) * slot
        for i in range(tiles_per_prog):
            n, oh, ow, pmask, n0, oh0, ow0 = _tile_positions(pid * tiles_per_prog + i, NT, N, OH, OW, TAPS_VEC,
                                                             TILE_W, BLOCK_P)
            m2d = pmask[:, None] & cmask[None, :]
            acc = _dw_conv_tile(x_ptr, w_ptr, scr, n, oh, ow, pmask, n0, oh0, ow0, c, cmask, s_in, t_in, H, W,
                                sxn, sxc, sxh, sxw, K, STRIDE, IN_AFFINE, IN_ACT, ACC, TAPS_VEC, KK_PAD, TILE_W,
                                BLOCK_P, BLOCK_C)
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
            store_partial_stats(pcnt_ptr, pmean_ptr, pm2_ptr, pid, c, cmask, C, n_run, mean_run, m2_run, BLOCK_C)

    @triton.jit(do_not_specialize=VARYING)
    def _dw_grad_y_kernel(x_ptr, w_ptr, is_ptr, it_ptr, os_ptr, ot_ptr, go_ptr, mean_ptr, gmean_ptr, gvar_ptr,
                          g_ptr, pgos_ptr, pgot_ptr, inv_m,
                          scr_ptr, C, N, H, W, OH, OW, NT, tiles_per_prog, slot,
                          sxn, sxc, sxh, sxw, son, soc, soh, sow, sgn, sgc, sgh, sgw,
                          K: tl.constexpr, STRIDE: tl.constexpr, IN_AFFINE: tl.constexpr, IN_ACT: tl.constexpr,
                          OUT_AFFINE: tl.constexpr, OUT_ACT: tl.constexpr, HAS_GO: tl.constexpr, STATS: tl.constexpr,
                          ACC: tl.constexpr, TAPS_VEC: tl.constexpr, KK_PAD: tl.constexpr, TILE_W: tl.constexpr,
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
        scr = scr_ptr + (tl.program_id(1) * tl.num_programs(0) + pid).to(tl.int64) * slot
        for i in range(tiles_per_prog):
            n, oh, ow, pmask, n0, oh0, ow0 = _tile_positions(pid * tiles_per_prog + i, NT, N, OH, OW, TAPS_VEC,
                                                             TILE_W, BLOCK_P)
            m2d = pmask[:, None] & cmask[None, :]
            y = _dw_conv_tile(x_ptr, w_ptr, scr, n, oh, ow, pmask, n0, oh0, ow0, c, cmask, s_in, t_in, H, W,
                              sxn, sxc, sxh, sxw, K, STRIDE, IN_AFFINE, IN_ACT, ACC, TAPS_VEC, KK_PAD, TILE_W,
                              BLOCK_P, BLOCK_C)
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
    def _prologue_act(xp, m2d, s_in, t_in, IN_AFFINE: tl.constexpr, IN_ACT: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """(raw x, a = in_act(x * s_in + t_in) (0 outside m2d), d a / d u) on a [positions x channels] tile."""
        xv = tl.load(xp, mask=m2d, other=0.0).to(ACC)
        u = xv
        if IN_AFFINE:
            u = xv * s_in[None, :] + t_in[None, :]
        a = u
        da = tl.zeros([BLOCK_P, BLOCK_C], ACC) + 1.0
        if IN_ACT:
            a, da = silu_fwd_bwd(u)
        return xv, tl.where(m2d, a, 0.0), da

    @triton.jit
    def _grad_at(gp, yp, m, mu, gm, gv2, Y_STATS: tl.constexpr, ACC: tl.constexpr):
        """d loss / d y at output positions (pointers gp into grad_out, yp into the saved raw output, valid where
        m): grad_out, plus with Y_STATS the batch statistics' term gm + gv2 (y - mean) from the saved y (a layer
        whose raw output feeds the next conv keeps it anyway: no recompute, no g tensor)."""
        gv = tl.load(gp, mask=m, other=0.0).to(ACC)
        if Y_STATS:
            yv = tl.load(yp, mask=m, other=0.0).to(ACC)
            gv += tl.where(m, gm + gv2 * (yv - mu), 0.0)
        return gv

    @triton.jit
    def _dw_bwd_taps_loop(g_ptr, y_ptr, w_ptr, n, ih, iw, qmask, c, cmask, a, pdw_ptr, C, accumulate, OH, OW,
                          sgn, sgc, sgh, sgw, syn, syc, syh, syw, mu, gm, gv2, K: tl.constexpr,
                          STRIDE: tl.constexpr, Y_STATS: tl.constexpr, ACC: tl.constexpr,
                          BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """GPU path of the backward tap loop: grad a at input positions (ih, iw) = sum over the taps that read them of
        g(out) * w(tap); each tap's weight-gradient sum over this tile, g(out) * a(in), is added to the program's
        own partial row pdw[tap] (in L1/L2: a [taps x channels] register accumulator would spill at 7x7)."""
        PAD: tl.constexpr = K // 2
        ga = tl.zeros([BLOCK_P, BLOCK_C], ACC)
        gb = g_ptr + n.to(tl.int64)[:, None] * sgn + c[None, :].to(tl.int64) * sgc
        yb = y_ptr + n.to(tl.int64)[:, None] * syn + c[None, :].to(tl.int64) * syc
        for kh in range(K):  # a runtime loop over kernel rows: unrolling all k*k taps spills at 7x7
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
                gv = _grad_at(gb + oh[:, None] * sgh + ow[:, None] * sgw, yb + oh[:, None] * syh + ow[:, None] * syw,
                              m, mu[None, :], gm[None, :], gv2[None, :], Y_STATS, ACC)
                wv = tl.load(w_ptr + c * (K * K) + (kh * K + kw), mask=cmask, other=0.0).to(ACC)
                ga += gv * wv[None, :]
                pp = pdw_ptr + (kh * K + kw) * C + c
                prev = tl.load(pp, mask=cmask & accumulate, other=0.0)
                tl.store(pp, prev + tl.sum(gv * a, axis=0), mask=cmask)
        return ga

    @triton.jit(do_not_specialize=VARYING)
    def _dw_bwd_kernel(x_ptr, w_ptr, is_ptr, it_ptr, g_ptr, y_ptr, mean_ptr, gmean_ptr, gvar_ptr, inv_m,
                       gx_ptr, pdw_ptr, pgs_ptr, pgt_ptr,
                       C, H, W, OH, OW, NP, tiles_per_prog,
                       sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw, syn, syc, syh, syw, sdn, sdc, sdh, sdw,
                       K: tl.constexpr, STRIDE: tl.constexpr, IN_AFFINE: tl.constexpr, IN_ACT: tl.constexpr,
                       Y_STATS: tl.constexpr, ACC: tl.constexpr, TAPS_VEC: tl.constexpr, KK_PAD: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """Over input positions: grad x = prologue'(x) * sum_taps g(out of tap) * w(tap), and per-program partial
        weight gradients sum g(out) * a(in) (a recomputed from x) and prologue-parameter gradients."""
        PAD: tl.constexpr = K // 2
        pid = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        kk = tl.arange(0, KK_PAD)
        s_in, t_in = load_channel_pair(is_ptr, it_ptr, c, cmask, IN_AFFINE, ACC, BLOCK_C)
        mu, gm, gv2 = load_stat_grads(mean_ptr, gmean_ptr, gvar_ptr, c, cmask, inv_m, Y_STATS, ACC, BLOCK_C)
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
            _, a, _ = _prologue_act(xp, m2d, s_in, t_in, IN_AFFINE, IN_ACT, ACC, BLOCK_P, BLOCK_C)
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
                yp = y_ptr + n.to(tl.int64)[:, None, None] * syn + c[None, None, :].to(tl.int64) * syc \
                    + oh[:, :, None] * syh + ow[:, :, None] * syw
                gv = _grad_at(gp, yp, m3, mu[None, None, :], gm[None, None, :], gv2[None, None, :], Y_STATS, ACC)
                wv = tl.load(w_ptr + c[None, :] * (K * K) + kk[:, None], mask=(kk < K * K)[:, None] & cmask[None, :],
                             other=0.0).to(ACC)
                ga = tl.sum(gv * wv[None, :, :], axis=1)
                dw_acc += tl.sum(gv * a[:, None, :], axis=0)
            else:
                ga = _dw_bwd_taps_loop(g_ptr, y_ptr, w_ptr, n, ih, iw, qmask, c, cmask, a, pdw_ptr + pid * (K * K * C),
                                       C, i > 0, OH, OW, sgn, sgc, sgh, sgw, syn, syc, syh, syw, mu, gm, gv2, K,
                                       STRIDE, Y_STATS, ACC, BLOCK_P, BLOCK_C)
                tl.debug_barrier()  # this tile's partial-row updates land before the next tile reads them
            # x reloaded (from L1/L2) rather than kept live through the tap loop with its derivative
            xv, _, da = _prologue_act(xp, m2d, s_in, t_in, IN_AFFINE, IN_ACT, ACC, BLOCK_P, BLOCK_C)
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
        if TAPS_VEC:
            KK: tl.constexpr = K * K
            tl.store(pdw_ptr + pid * (KK * C) + kk[:, None] * C + c[None, :], dw_acc,
                     mask=(kk[:, None] < KK) & cmask[None, :])
        if IN_AFFINE:
            tl.store(pgs_ptr + pid * C + c, gs, mask=cmask)
            tl.store(pgt_ptr + pid * C + c, gt, mask=cmask)


# ---------------------------------------------------------------------------------------------------- launchers
# ptxas left to itself gives some variants 80-128 registers and spills (its heuristic, not a need): an explicit
# ceiling of the hardware's 255 lets each variant take what it needs (bench.static: none then spills).
MAXNREG = 255

# Tests set this to run the GPU kernels' path (staged tiles, tap loops) under the interpreter too (by default the
# interpreter takes the vectorised-taps path, which is many times faster there).
TAP_LOOP_ON_CPU = False


def _tapsvec(x):
    return x.device.type != "cuda" and not TAP_LOOP_ON_CPU


def _blocks(C, spatial, x, K=3, bwd=False, prologue=True):
    """(BLOCK_P, BLOCK_C, num_warps). channels_last: wide channel blocks (contiguous); NCHW: wide spatial blocks.
    GPU sizes from ptxas on sm_90a (bench.static), chosen so that no variant spills: a 64x64 tile with the BN + SiLU
    prologue needs 8 warps (without one, 4: at 8 ptxas caps it at 128 registers and spills); the backward over
    input positions, which also holds the activation and its derivative, 32 positions a tile on 8 warps."""
    if triton_interpreted() or x.device.type != "cuda":
        # the interpreter pays per program and per op, not per element: few, large tiles
        bc = min(max(next_pow2(C), 2), 64)
        cap = 256 if not _tapsvec(x) else max(16, (1 << 18) // (next_pow2(K * K) * bc))
        return min(max(next_pow2(spatial), 16), cap), bc, 4
    if is_channels_last(x):
        bc = min(max(next_pow2(C), 8), 64)
        bp = (32 if bwd else 64) if bc == 64 else 128
    else:
        bc, bp = min(max(next_pow2(C), 2), 4), 256
    if x.dtype == torch.float64:  # fp64 (gradcheck) tiles: keep register use and compile time small
        bp = max(16, min(bp, 1024 // bc))
    big = bp * bc >= (2048 if bwd else 4096)
    return bp, bc, (8 if big and (prologue or bwd) else 4)


@dataclass
class _ConvGrid:
    """How a conv kernel over output tiles (_dw_fwd_kernel, _dw_grad_y_kernel) is launched: blocks, warps, the
    (splits, channel blocks) grid, tiles per program, TILE_W, the number of tiles and each program's scratch
    slot (see _tile_positions)."""
    BP: int
    BC: int
    nw: int
    grid: tuple
    per: int
    tile_w: int
    nt: int
    slot: int
    scratch: torch.Tensor


def _conv_grid(x, C, N, OH, OW, K, stride, prologue):
    """Output tiles: BLOCK_P flat positions under the interpreter's TAPS_VEC path; else TILE_H x TILE_W blocks,
    each staging its (TILE_H - 1) * stride + k by (TILE_W - 1) * stride + k input region in its slot."""
    BP, BC, nw = _blocks(C, N * OH * OW, x, K, prologue=prologue)
    cblk = triton.cdiv(C, BC)
    if _tapsvec(x):
        tw, nt, slot = 1, triton.cdiv(N * OH * OW, BP), 0
    else:
        tw = min(next_pow2(OW), 16 if BP >= 128 else 8, BP)
        th = BP // tw
        region = ((th - 1) * stride + K) * ((tw - 1) * stride + K)
        nt, slot = N * triton.cdiv(OH, th) * triton.cdiv(OW, tw), triton.cdiv(region, BP) * BP * BC
    splits, per = split_tiles(nt, cblk, x.device)
    return _ConvGrid(BP, BC, nw, (splits, cblk), per, tw, nt, slot, empty(max(1, splits * cblk * slot), x))


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
    w = _taps(weight)
    cg = _conv_grid(x, C, N, OH, OW, K, stride, in_scale is not None or bool(in_act))
    pcnt, pmean, pm2 = partial_stats(cg.grid[0], C, x, sd, stats)
    si, ti, so, to = (vec(t) for t in (in_scale, in_shift, out_scale, out_shift))
    dummy = pcnt
    _dw_fwd_kernel[cg.grid](
        x, w, si if si is not None else dummy, ti if ti is not None else dummy,
        so if so is not None else dummy, to if to is not None else dummy,
        residual if residual is not None else dummy, out if write_out else dummy, pcnt, pmean, pm2,
        cg.scratch, C, N, H, W, OH, OW, cg.nt, cg.per, cg.slot,
        *x.stride(), *strides4(out), *strides4(residual),
        K=K, STRIDE=stride, IN_AFFINE=si is not None, IN_ACT=bool(in_act), OUT_AFFINE=so is not None,
        OUT_ACT=bool(out_act), HAS_RES=residual is not None, WRITE_OUT=bool(write_out), STATS=bool(stats),
        ACC=tl_acc(x.dtype), TAPS_VEC=_tapsvec(x), KK_PAD=next_pow2(K * K), TILE_W=cg.tile_w, BLOCK_P=cg.BP,
        BLOCK_C=cg.BC, num_warps=cg.nw, maxnreg=MAXNREG)
    if stats:
        return (out, *finish_stats(pcnt, pmean, pm2, x))
    return out, x.new_empty(0, dtype=sd), x.new_empty(0, dtype=sd)


def _taps(weight):
    """The (C, 1, k, k) depthwise weight as (C, k*k) rows, without a copy when it is contiguous."""
    w = weight.detach().reshape(weight.shape[0], -1)
    return w if w.is_contiguous() else w.contiguous()


def _grad_y_pass(grad_out, x, w, si, ti, so, to, mean, grad_mean, grad_var, stride, in_act, out_act, out=None):
    """d loss / d y in fp32 with y recomputed (never saved): through the epilogue (affine so/to, act) when grad_out
    is given, plus the batch statistics' term when grad_mean/grad_var are. Returns (g, g_so, g_to); g is written
    into `out` when given (it may be grad_out itself: each element is read before it is written, by one thread)."""
    N, C, H, W = x.shape
    K = math.isqrt(w.shape[1])
    OH, OW = conv_out_size(H, K, stride), conv_out_size(W, K, stride)
    sd = acc_dtype(x)
    dummy = x.new_empty(1, dtype=sd)
    has_go, stats = grad_out is not None, grad_mean is not None
    g = out if out is not None else empty_4d((N, C, OH, OW), x, dtype=sd)
    NP = N * OH * OW
    cg = _conv_grid(x, C, N, OH, OW, K, stride, si is not None or bool(in_act))
    pgos = empty((cg.grid[0], C), x, sd) if so is not None else dummy
    pgot = empty((cg.grid[0], C), x, sd) if so is not None else dummy
    _dw_grad_y_kernel[cg.grid](
        x, w, si if si is not None else dummy, ti if ti is not None else dummy,
        so if so is not None else dummy, to if to is not None else dummy,
        grad_out if has_go else dummy, vec(mean) if stats else dummy,
        vec(grad_mean) if stats else dummy, vec(grad_var) if stats else dummy,
        g, pgos, pgot, 1.0 / NP,
        cg.scratch, C, N, H, W, OH, OW, cg.nt, cg.per, cg.slot,
        *x.stride(), *(grad_out.stride() if has_go else (0, 0, 0, 0)), *g.stride(),
        K=K, STRIDE=stride, IN_AFFINE=si is not None, IN_ACT=bool(in_act), OUT_AFFINE=so is not None,
        OUT_ACT=bool(out_act), HAS_GO=has_go, STATS=stats, ACC=tl_acc(x.dtype), TAPS_VEC=_tapsvec(x),
        KK_PAD=next_pow2(K * K), TILE_W=cg.tile_w, BLOCK_P=cg.BP, BLOCK_C=cg.BC, num_warps=cg.nw,
        maxnreg=MAXNREG)
    if so is None:
        return g, None, None
    return g, sum_partials(pgos, empty(C, x, sd)), sum_partials(pgot, empty(C, x, sd))


def _input_grad_pass(g, x, weight, w, si, ti, stride, in_act, y=None, mean=None, grad_mean=None, grad_var=None):
    """(grad x, grad weight, grad in_scale, grad in_shift) from g = d loss / d y: one pass over input positions
    and the on-device sums of its per-program partials. With the saved raw output y, g is grad_out and the batch
    statistics' term is added on the fly (see _grad_at)."""
    N, C, H, W = x.shape
    K = weight.shape[-1]
    OH, OW = conv_out_size(H, K, stride), conv_out_size(W, K, stride)
    sd = acc_dtype(x)
    dummy = x.new_empty(1, dtype=sd)
    gx = empty_4d((N, C, H, W), x)
    NP = N * H * W
    BP, BC, nw = _blocks(C, NP, x, K, bwd=True)
    cblk = triton.cdiv(C, BC)
    splits, per = split_tiles(triton.cdiv(NP, BP), cblk, x.device)
    pdw = empty((splits, K * K, C), x, sd)
    pgs = empty((splits, C), x, sd) if si is not None else dummy
    pgt = empty((splits, C), x, sd) if si is not None else dummy
    y_stats = y is not None
    _dw_bwd_kernel[(splits, cblk)](
        x, w, si if si is not None else dummy, ti if ti is not None else dummy, g, y if y_stats else dummy,
        *((vec(mean), vec(grad_mean), vec(grad_var)) if y_stats else (dummy,) * 3), 1.0 / (N * OH * OW),
        gx, pdw, pgs, pgt, C, H, W, OH, OW, NP, per,
        *x.stride(), *g.stride(), *strides4(y), *gx.stride(),
        K=K, STRIDE=stride, IN_AFFINE=si is not None, IN_ACT=bool(in_act), Y_STATS=y_stats, ACC=tl_acc(x.dtype),
        TAPS_VEC=_tapsvec(x), KK_PAD=next_pow2(K * K), BLOCK_P=BP, BLOCK_C=BC, num_warps=nw,
        maxnreg=MAXNREG)
    gw = sum_partials(pdw, torch.empty_like(weight, memory_format=torch.contiguous_format), taps=K * K)
    if si is None:
        return gx, gw, x.new_empty(0, dtype=sd), x.new_empty(0, dtype=sd)
    return gx, gw, sum_partials(pgs, empty(C, x, sd)), sum_partials(pgt, empty(C, x, sd))


def _dw_backward(grad_out, grad_mean, grad_var, x, weight, in_scale, in_shift, out_scale, out_shift, mean, y,
                 stride, in_act, out_act, write_out, stats):
    N, C, H, W = x.shape
    K = weight.shape[-1]
    OH, OW = conv_out_size(H, K, stride), conv_out_size(W, K, stride)
    sd = acc_dtype(x)
    has_go = bool(write_out) and grad_out is not None and grad_out.numel() > 0
    grad_mean, grad_var = stat_grads(grad_mean, grad_var)
    stats = bool(stats) and grad_mean is not None and grad_mean.numel() > 0

    def zeros_or_empty(t):  # distinct tensors: a custom op's outputs may not alias each other
        return torch.zeros(C if t is not None else 0, dtype=sd, device=x.device)
    if (not has_go and not stats) or N * OH * OW == 0 or C == 0:
        return (empty_4d((N, C, H, W), x).zero_(), torch.zeros_like(weight),
                *(zeros_or_empty(t) for t in (in_scale, in_shift, out_scale, out_shift)))
    w = _taps(weight)
    si, ti, so, to = (vec(t) for t in (in_scale, in_shift, out_scale, out_shift))
    g, g_os, g_ot = grad_out, None, None
    if stats and has_go and y is not None and y.numel():  # a raw output that was saved: no recompute pass
        return (*_input_grad_pass(grad_out, x, weight, w, si, ti, stride, in_act, y, mean, grad_mean, grad_var),
                x.new_empty(0, dtype=sd), x.new_empty(0, dtype=sd))
    if stats or so is not None or (out_act and has_go):
        g, g_os, g_ot = _grad_y_pass(grad_out if has_go else None, x, w, si, ti, so, to, mean if stats else None,
                                     grad_mean if stats else None, grad_var if stats else None, stride, in_act,
                                     out_act)
    # else g = grad_out: any strides (even expanded ones) are read as they are
    if g_os is None:
        g_os, g_ot = x.new_empty(0, dtype=sd), x.new_empty(0, dtype=sd)
    return (*_input_grad_pass(g, x, weight, w, si, ti, stride, in_act), g_os, g_ot)


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
                        y: Optional[Tensor], stride: int, in_act: bool, out_act: bool, write_out: bool, stats: bool
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad x, grad weight, grad in_scale, grad in_shift, grad out_scale, grad out_shift); the affine-vector
    gradients are fp32 (fp64 for fp64 x), empty where that vector was not given."""
    return _dw_backward(grad_out, grad_mean, grad_var, x, weight, in_scale, in_shift, out_scale, out_shift, mean,
                        y, stride, in_act, out_act, write_out, stats)


@dw_conv_bn_backward.register_fake
def _dw_conv_bn_backward_fake(grad_out, grad_mean, grad_var, x, weight, in_scale, in_shift, out_scale, out_shift,
                              mean, y, stride, in_act, out_act, write_out, stats):
    C = x.shape[1]
    sd = acc_dtype(x)

    def vec(t):
        return x.new_empty(C if t is not None else 0, dtype=sd)
    return (empty_4d(tuple(x.shape), x), torch.empty_like(weight, memory_format=torch.contiguous_format),
            vec(in_scale), vec(in_shift), vec(out_scale), vec(out_shift))


def _setup_context(ctx, inputs, output):
    x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride, in_act, out_act, write_out, stats = inputs
    out, mean, _ = output
    # the input and per-channel vectors; y itself only where out is the raw y with batch statistics (the next
    # conv's input, saved by it anyway): its backward then needs no recompute pass. Else y is recomputed.
    raw = write_out and stats and out_scale is None and not out_act and residual is None
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zero tensor is made for it
    ctx.save_for_backward(x, weight, in_scale, in_shift, out_scale, out_shift, mean if stats else None,
                          out if raw else None)
    ctx.cfg = (stride, in_act, out_act, write_out, stats, residual is not None)


def _backward(ctx, grad_out, grad_mean, grad_var):
    x, weight, in_scale, in_shift, out_scale, out_shift, mean, y = ctx.saved_tensors
    stride, in_act, out_act, write_out, stats, has_res = ctx.cfg
    gx, gw, g_is, g_it, g_os, g_ot = dw_conv_bn_backward(
        grad_out, grad_mean, grad_var, x, weight, in_scale, in_shift, out_scale, out_shift, mean, y,
        stride, in_act, out_act, write_out, stats)
    return (gx, gw, grad_like(g_is, in_scale), grad_like(g_it, in_shift), grad_like(g_os, out_scale),
            grad_like(g_ot, out_shift), grad_out if has_res else None, None, None, None, None, None)


dw_conv_bn.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------ the last depthwise layer of a chain
# A chain's last conv normalises with the statistics of its own output, so it runs twice over its input (a
# statistics-only pass, then a pass whose epilogue writes act(BN(y)) (+ residual)). As one op (with the BN's affine
# and running-statistics update between the passes) the two passes share one autograd node: one backward, which
# takes three passes (the epilogue's gradient and its per-channel sums; the statistics' term; grad x and weight)
# where two separate ops would take four, and no gradient sums for the input they would both read.
@torch.library.custom_op(op_name("dw_conv_bn_act"),
                         mutates_args=("running_mean", "running_var", "num_batches_tracked"))
def dw_conv_bn_act(x: Tensor, weight: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor],
                   residual: Optional[Tensor], bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
                   running_mean: Optional[Tensor], running_var: Optional[Tensor],
                   num_batches_tracked: Optional[Tensor], stride: int, in_act: bool, out_act: bool, eps: float,
                   momentum: Optional[float], update: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """out = out_act(BN(depthwise_conv(in_act(x * in_scale + in_shift)))) (+ residual), BN with the batch
    statistics of the conv's output (running statistics updated when `update`). Returns (out, mean, var, scale,
    shift), the last four per channel in the accumulation dtype."""
    _check_args(x, weight, in_scale, in_shift, None, None, residual, stride)
    _, mean, var = _dw_forward(x, weight, in_scale, in_shift, None, None, None, stride, in_act, False, False, True)
    N, _, H, W = x.shape
    K = weight.shape[-1]
    count = N * conv_out_size(H, K, stride) * conv_out_size(W, K, stride)
    scale, shift = affine_from_stats(mean, var, bn_weight, bn_bias, running_mean, running_var, num_batches_tracked,
                                     float(count), eps, momentum, update)
    out = _dw_forward(x, weight, in_scale, in_shift, scale, shift, residual, stride, in_act, out_act, True, False)[0]
    return out, mean, var, scale, shift


@dw_conv_bn_act.register_fake
def _dw_conv_bn_act_fake(x, weight, in_scale, in_shift, residual, bn_weight, bn_bias, running_mean, running_var,
                         num_batches_tracked, stride, in_act, out_act, eps, momentum, update):
    out = _dw_conv_bn_fake(x, weight, in_scale, in_shift, None, None, residual, stride, in_act, out_act, True, True)
    mean = out[1]
    return out[0], mean, torch.empty_like(mean), torch.empty_like(mean), torch.empty_like(mean)


@torch.library.custom_op(op_name("dw_conv_bn_act_backward"), mutates_args=())
def dw_conv_bn_act_backward(grad_out: Tensor, x: Tensor, weight: Tensor, in_scale: Optional[Tensor],
                            in_shift: Optional[Tensor], bn_weight: Optional[Tensor], has_bias: bool,
                            bias_dtype: torch.dtype, mean: Tensor, var: Tensor, scale: Tensor, shift: Tensor,
                            stride: int, in_act: bool, out_act: bool, eps: float
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad x, grad weight, grad in_scale, grad in_shift, grad BN weight, grad BN bias); empty where absent."""
    w = _taps(weight)
    si, ti = vec(in_scale), vec(in_shift)
    g, g_scale, g_shift = _grad_y_pass(grad_out, x, w, si, ti, scale, shift, None, None, None, stride, in_act,
                                       out_act)
    g_mean, g_var, g_bw, g_bb = affine_grads(g_scale, g_shift, mean, var, bn_weight, has_bias, bias_dtype, eps)
    g = _grad_y_pass(g, x, w, si, ti, None, None, mean, g_mean, g_var, stride, in_act, False, out=g)[0]
    return (*_input_grad_pass(g, x, weight, w, si, ti, stride, in_act), g_bw, g_bb)


@dw_conv_bn_act_backward.register_fake
def _dw_conv_bn_act_backward_fake(grad_out, x, weight, in_scale, in_shift, bn_weight, has_bias, bias_dtype, mean,
                                  var, scale, shift, stride, in_act, out_act, eps):
    gx, gw, g_is, g_it, _, _ = _dw_conv_bn_backward_fake(grad_out, None, None, x, weight, in_scale, in_shift, None,
                                                         None, mean, None, stride, in_act, out_act, True, False)
    C = x.shape[1]
    return (gx, gw, g_is, g_it,
            x.new_empty(C if bn_weight is not None else 0, dtype=bn_weight.dtype if bn_weight is not None else x.dtype),
            x.new_empty(C if has_bias else 0, dtype=bias_dtype))


class _DwConvBnAct(torch.autograd.Function):
    """Autograd of dw_conv_bn_act (an op that updates running statistics cannot register its own)."""

    @staticmethod
    def forward(ctx, x, weight, in_scale, in_shift, residual, bn, stride, in_act, out_act, bn_weight, bn_bias):
        out, mean, var, scale, shift = dw_conv_bn_act(
            x, weight, in_scale, in_shift, residual, bn_weight, bn_bias, bn.running_mean, bn.running_var,
            bn.num_batches_tracked, stride, in_act, out_act, float(bn.eps), bn.momentum, bool(bn.training))
        ctx.save_for_backward(x, weight, in_scale, in_shift, bn_weight, mean, var, scale, shift)
        ctx.cfg = (stride, in_act, out_act, float(bn.eps), residual is not None, bn_bias is not None,
                   bn_bias.dtype if bn_bias is not None else mean.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, in_scale, in_shift, bn_weight, mean, var, scale, shift = ctx.saved_tensors
        stride, in_act, out_act, eps, has_res, has_bias, bias_dtype = ctx.cfg
        gx, gw, g_is, g_it, g_bw, g_bb = dw_conv_bn_act_backward(
            grad_out, x, weight, in_scale, in_shift, bn_weight, has_bias, bias_dtype, mean, var, scale, shift,
            stride, in_act, out_act, eps)
        return (gx, gw, grad_like(g_is, in_scale), grad_like(g_it, in_shift), grad_out if has_res else None,
                None, None, None, None, g_bw if bn_weight is not None else None, g_bb if has_bias else None)


def dw_conv_bn_act_train(x, weight, in_scale, in_shift, residual, bn, stride, in_act, out_act):
    """The last depthwise layer of a training chain with its BN on batch statistics (see dw_conv_bn_act);
    differentiable in x, weight, the input affine, residual and the BN's weight and bias. bn: an nn.BatchNorm2d
    or a BatchNormSpec."""
    return _DwConvBnAct.apply(x, weight, in_scale, in_shift, residual, bn, stride, in_act, out_act, bn.weight,
                              bn.bias)
