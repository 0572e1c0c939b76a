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
update, epilogue pass; one backward (see its section below).

Op `yolov10_kernels::dw_repvgg_bn(...)` (`dw_repvgg_train`): a RepVGGDW (a k x k and a centred smaller depthwise
conv of one input, each with a BN on batch statistics, summed) in training as one op: both branches' statistics
from one pass, their BN affines, the merged-weight conv; one backward (see the last section).

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

from ..gpus import emulating
from .batchnorm import affine_from_stats, affine_grads
from .utils import (acc_dtype, check_device, check_tensor, conv_out_size, empty, empty_4d, finish_stats, grad_like,
                    is_channels_last, next_pow2, on_device, op_name, partial_stats, split_tiles, stat_grads,
                    strides4, sum_partials, tl, tl_acc, triton, triton_interpreted, vec)

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
    def _dw_conv_tile(x_ptr, w_ptr, w2_ptr, scr_ptr, n, oh, ow, pmask, live, n0, oh0, ow0, c, cmask, s_in, t_in,
                      H, W, sxn, sxc, sxh, sxw, K: tl.constexpr, K2: tl.constexpr, STRIDE: tl.constexpr,
                      IN_AFFINE: tl.constexpr, IN_ACT: tl.constexpr, ACC: tl.constexpr, TAPS_VEC: tl.constexpr,
                      KK_PAD: tl.constexpr, TILE_W: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """Raw depthwise conv outputs at output positions (oh, ow) [BLOCK_P] x channels c [BLOCK_C] of the
        prologue-activated input, and with K2 > 0 those of a second, centred K2 x K2 weight over the same input
        (a RepVGGDW's small branch, reading the same staged region; zeros without one). GPU: the tile's input
        region (its outputs' receptive field) is activated once per element and staged in the program's own
        scratch slot (L1/L2), then the taps read it back: one BN + SiLU per input element instead of one per
        tap (k*k times as many exp); `live`: the tile exists (t < NT: the last program of a split grid may get
        tiles past the end, whose image n0 >= N must not be read). TAPS_VEC (the interpreter's fast path): the k*k
        taps as a third tile dimension, the prologue applied per tap."""
        PAD: tl.constexpr = K // 2
        D2: tl.constexpr = (K - K2) // 2  # the second kernel's offset inside the first's taps
        acc2 = tl.zeros([BLOCK_P, BLOCK_C], ACC)
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
            if K2 > 0:
                th = tap // K - D2
                tw = tap % K - D2
                inner = (tap < K * K) & (th >= 0) & (th < K2) & (tw >= 0) & (tw < K2)
                w2v = tl.load(w2_ptr + c[None, :] * (K2 * K2) + (th * K2 + tw)[:, None],
                              mask=inner[:, None] & cmask[None, :], other=0.0).to(ACC)
                acc2 = tl.sum(xv * w2v[None, :, :], axis=1)
            return tl.sum(xv * wv[None, :, :], axis=1), acc2
        TILE_H: tl.constexpr = BLOCK_P // TILE_W
        EW: tl.constexpr = (TILE_W - 1) * STRIDE + K
        EH: tl.constexpr = (TILE_H - 1) * STRIDE + K
        cl = tl.arange(0, BLOCK_C)
        xb = x_ptr + n0.to(tl.int64) * sxn + c.to(tl.int64) * sxc
        for e0 in range(0, EH * EW, BLOCK_P):  # stage the region in [BLOCK_P x BLOCK_C] chunks (a runtime loop)
            e = e0 + tl.arange(0, BLOCK_P)
            ih = oh0 * STRIDE - PAD + e // EW
            iw = ow0 * STRIDE - PAD + e % EW
            m = (live & (e < EH * EW) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))[:, None] & cmask[None, :]
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
                if K2 > 0:
                    if kw >= D2:
                        if kw < D2 + K2:
                            kh2 = kh - D2
                            w2v = tl.load(w2_ptr + c * (K2 * K2) + (kh2 * K2 + kw - D2),
                                          mask=cmask & (kh2 >= 0) & (kh2 < K2), other=0.0).to(ACC)
                            acc2 += v * w2v[None, :]
        tl.debug_barrier()  # every tap has read the slot before the next tile restages it
        return acc, acc2

    @triton.jit(do_not_specialize=VARYING)
    def _dw_fwd_kernel(x_ptr, w_ptr, is_ptr, it_ptr, os_ptr, ot_ptr, r_ptr, y_ptr, pcnt_ptr, pmean_ptr, pm2_ptr,
                       w2_ptr, y2_ptr, p2cnt_ptr, p2mean_ptr, p2m2_ptr, g_ptr, pg_ptr,
                       scr_ptr, C, N, H, W, OH, OW, NT, tiles_per_prog, slot,
                       sxn, sxc, sxh, sxw, syn, syc, syh, syw, srn, src, srh, srw, sgn, sgc, sgh, sgw,
                       K: tl.constexpr, K2: tl.constexpr, STRIDE: tl.constexpr, IN_AFFINE: tl.constexpr,
                       IN_ACT: tl.constexpr, OUT_AFFINE: tl.constexpr, OUT_ACT: tl.constexpr, HAS_RES: tl.constexpr,
                       WRITE_OUT: tl.constexpr, STATS: tl.constexpr, G_SUMS: tl.constexpr, ACC: tl.constexpr,
                       TAPS_VEC: tl.constexpr, KK_PAD: tl.constexpr, TILE_W: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        pid = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        s_in, t_in = load_channel_pair(is_ptr, it_ptr, c, cmask, IN_AFFINE, ACC, BLOCK_C)
        s_out, t_out = load_channel_pair(os_ptr, ot_ptr, c, cmask, OUT_AFFINE, ACC, BLOCK_C)
        n_run = tl.zeros([BLOCK_C], ACC)
        mean_run = tl.zeros([BLOCK_C], ACC)
        m2_run = tl.zeros([BLOCK_C], ACC)
        n2_run, mean2_run, m22_run = n_run, mean_run, m2_run  # the second weight's (K2 > 0)
        gs = tl.zeros([BLOCK_C], ACC)  # G_SUMS: sum grad_out * y (and * y2)
        gs2 = tl.zeros([BLOCK_C], ACC)
        scr = scr_ptr + (tl.program_id(1) * tl.num_programs(0) + pid).to(tl.int64) * slot
        for i in range(tiles_per_prog):
            t = pid * tiles_per_prog + i
            n, oh, ow, pmask, n0, oh0, ow0 = _tile_positions(t, NT, N, OH, OW, TAPS_VEC, TILE_W, BLOCK_P)
            m2d = pmask[:, None] & cmask[None, :]
            acc, acc2 = _dw_conv_tile(x_ptr, w_ptr, w2_ptr, scr, n, oh, ow, pmask, t < NT, n0, oh0, ow0, c, cmask,
                                      s_in, t_in, H, W, sxn, sxc, sxh, sxw, K, K2, STRIDE, IN_AFFINE, IN_ACT, ACC,
                                      TAPS_VEC, KK_PAD, TILE_W, BLOCK_P, BLOCK_C)
            if STATS:
                nb = tl.sum(pmask.to(ACC), axis=0)
                n_run, mean_run, m2_run = tile_stats_merge(n_run, mean_run, m2_run, acc, m2d, nb)
                if K2 > 0:
                    n2_run, mean2_run, m22_run = tile_stats_merge(n2_run, mean2_run, m22_run, acc2, m2d, nb)
            if G_SUMS:
                go = tl.load(g_ptr + n.to(tl.int64)[:, None] * sgn + c[None, :].to(tl.int64) * sgc + oh[:, None] * sgh
                             + ow[:, None] * sgw, mask=m2d, other=0.0).to(ACC)
                gs += tl.sum(tl.where(m2d, go * acc, 0.0), axis=0)
                gs2 += tl.sum(tl.where(m2d, go * acc2, 0.0), axis=0)
            if WRITE_OUT:
                v = acc
                if OUT_AFFINE:
                    v = v * s_out[None, :] + t_out[None, :]
                if OUT_ACT:
                    v = silu_fwd(v)
                if HAS_RES:
                    rp = r_ptr + n.to(tl.int64)[:, None] * srn + c[None, :].to(tl.int64) * src + oh[:, None] * srh + ow[:, None] * srw
                    v += tl.load(rp, mask=m2d, other=0.0).to(ACC)
                yoff = n.to(tl.int64)[:, None] * syn + c[None, :].to(tl.int64) * syc + oh[:, None] * syh + ow[:, None] * syw
                tl.store(y_ptr + yoff, v.to(y_ptr.dtype.element_ty), mask=m2d)
                if K2 > 0:  # raw, in y's layout
                    tl.store(y2_ptr + yoff, acc2.to(y2_ptr.dtype.element_ty), mask=m2d)
        if STATS:
            store_partial_stats(pcnt_ptr, pmean_ptr, pm2_ptr, pid, c, cmask, C, n_run, mean_run, m2_run, BLOCK_C)
            if K2 > 0:
                store_partial_stats(p2cnt_ptr, p2mean_ptr, p2m2_ptr, pid, c, cmask, C, n2_run, mean2_run, m22_run,
                                    BLOCK_C)
        if G_SUMS:
            tl.store(pg_ptr + pid * 2 * C + c, gs, mask=cmask)
            tl.store(pg_ptr + (pid * 2 + 1) * C + c, gs2, mask=cmask)

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
            t = pid * tiles_per_prog + i
            n, oh, ow, pmask, n0, oh0, ow0 = _tile_positions(t, NT, N, OH, OW, TAPS_VEC, TILE_W, BLOCK_P)
            m2d = pmask[:, None] & cmask[None, :]
            y, _ = _dw_conv_tile(x_ptr, w_ptr, w_ptr, scr, n, oh, ow, pmask, t < NT, n0, oh0, ow0, c, cmask, s_in,
                                 t_in, H, W, sxn, sxc, sxh, sxw, K, 0, STRIDE, IN_AFFINE, IN_ACT, ACC, TAPS_VEC,
                                 KK_PAD, TILE_W, BLOCK_P, BLOCK_C)
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
    def _grad_at(go, yp, m, gsc, mu, gm, gv2, GO_SCALE: tl.constexpr, Y_STATS: tl.constexpr, ACC: tl.constexpr):
        """d loss / d y at output positions (go: grad_out loaded there, yp: pointers into the saved raw output,
        valid where m): grad_out (times gsc with GO_SCALE: y reaches the output scaled, as a RepVGGDW's branch
        does), plus with Y_STATS the batch statistics' term gm + gv2 (y - mean) from the saved y (a layer whose raw
        output feeds the next conv keeps it anyway: no recompute, no g tensor)."""
        gv = go
        if GO_SCALE:
            gv = go * gsc
        if Y_STATS:
            yv = tl.load(yp, mask=m, other=0.0).to(ACC)
            gv += tl.where(m, gm + gv2 * (yv - mu), 0.0)
        return gv

    @triton.jit
    def _dw_bwd_taps_loop(g_ptr, y_ptr, w_ptr, n, ih, iw, qmask, c, cmask, a, pdw_ptr, C, accumulate, OH, OW,
                          sgn, sgc, sgh, sgw, syn, syc, syh, syw, gsc, mu, gm, gv2,
                          y2_ptr, w2_ptr, pdw2_ptr, gsc2, mu2, gm2, gv22,
                          K: tl.constexpr, K2: tl.constexpr, STRIDE: tl.constexpr, GO_SCALE: tl.constexpr,
                          Y_STATS: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """GPU path of the backward tap loop: grad a at input positions (ih, iw) = sum over the taps that read them of
        g(out) * w(tap); each tap's weight-gradient sum over this tile, g(out) * a(in), is added to the program's
        own partial row pdw[tap] (in L1/L2: a [taps x channels] register accumulator would spill at 7x7). K2 > 0:
        the same for a second, centred K2 x K2 weight whose output y2 (saved) reached grad_out scaled by gsc2."""
        PAD: tl.constexpr = K // 2
        D2: tl.constexpr = (K - K2) // 2
        ga = tl.zeros([BLOCK_P, BLOCK_C], ACC)
        gb = g_ptr + n.to(tl.int64)[:, None] * sgn + c[None, :].to(tl.int64) * sgc
        yb = y_ptr + n.to(tl.int64)[:, None] * syn + c[None, :].to(tl.int64) * syc
        y2b = y2_ptr + n.to(tl.int64)[:, None] * syn + c[None, :].to(tl.int64) * syc
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
                go = tl.load(gb + oh[:, None] * sgh + ow[:, None] * sgw, mask=m, other=0.0).to(ACC)
                yoff = oh[:, None] * syh + ow[:, None] * syw
                gv = _grad_at(go, yb + yoff, m, gsc[None, :], mu[None, :], gm[None, :], gv2[None, :], GO_SCALE,
                              Y_STATS, ACC)
                wv = tl.load(w_ptr + c * (K * K) + (kh * K + kw), mask=cmask, other=0.0).to(ACC)
                ga += gv * wv[None, :]
                pp = pdw_ptr + (kh * K + kw) * C + c
                prev = tl.load(pp, mask=cmask & accumulate, other=0.0)
                tl.store(pp, prev + tl.sum(gv * a, axis=0), mask=cmask)
                if K2 > 0:
                    if kw >= D2:
                        if kw < D2 + K2:
                            kh2 = kh - D2
                            cm2 = cmask & (kh2 >= 0) & (kh2 < K2)
                            m2 = m & cm2[None, :]
                            gv = tl.where(m2, _grad_at(go, y2b + yoff, m2, gsc2[None, :], mu2[None, :],
                                                       gm2[None, :], gv22[None, :], GO_SCALE, True, ACC), 0.0)
                            w2v = tl.load(w2_ptr + c * (K2 * K2) + (kh2 * K2 + kw - D2), mask=cm2,
                                          other=0.0).to(ACC)
                            ga += gv * w2v[None, :]
                            pp = pdw2_ptr + (kh2 * K2 + kw - D2) * C + c
                            prev = tl.load(pp, mask=cm2 & accumulate, other=0.0)
                            tl.store(pp, prev + tl.sum(gv * a, axis=0), mask=cm2)
        return ga

    @triton.jit(do_not_specialize=VARYING)
    def _dw_bwd_kernel(x_ptr, w_ptr, is_ptr, it_ptr, g_ptr, y_ptr, mean_ptr, gmean_ptr, gvar_ptr, inv_m,
                       gx_ptr, pdw_ptr, pgs_ptr, pgt_ptr, gsc_ptr,
                       w2_ptr, y2_ptr, mean2_ptr, gmean2_ptr, gvar2_ptr, gsc2_ptr, pdw2_ptr,
                       C, H, W, OH, OW, NP, tiles_per_prog,
                       sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw, syn, syc, syh, syw, sdn, sdc, sdh, sdw,
                       K: tl.constexpr, K2: tl.constexpr, STRIDE: tl.constexpr, IN_AFFINE: tl.constexpr,
                       IN_ACT: tl.constexpr, GO_SCALE: tl.constexpr, Y_STATS: tl.constexpr, ACC: tl.constexpr,
                       TAPS_VEC: tl.constexpr, KK_PAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """Over input positions: grad x = prologue'(x) * sum_taps g(out of tap) * w(tap), and per-program partial
        weight gradients sum g(out) * a(in) (a recomputed from x) and prologue-parameter gradients. K2 > 0 (a
        RepVGGDW): the same input feeds a second, centred K2 x K2 weight (saved output y2, its own statistics and
        grad_out scale): grad x sums both, each weight gets its partial rows."""
        PAD: tl.constexpr = K // 2
        D2: tl.constexpr = (K - K2) // 2
        pid = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        kk = tl.arange(0, KK_PAD)
        s_in, t_in = load_channel_pair(is_ptr, it_ptr, c, cmask, IN_AFFINE, ACC, BLOCK_C)
        mu, gm, gv2 = load_stat_grads(mean_ptr, gmean_ptr, gvar_ptr, c, cmask, inv_m, Y_STATS, ACC, BLOCK_C)
        gsc, gsc2 = load_channel_pair(gsc_ptr, gsc2_ptr, c, cmask, GO_SCALE, ACC, BLOCK_C)
        mu2, gm2, gv22 = load_stat_grads(mean2_ptr, gmean2_ptr, gvar2_ptr, c, cmask, inv_m, K2 > 0, ACC, BLOCK_C)
        dw_acc = tl.zeros([KK_PAD, BLOCK_C], ACC)
        dw2_acc = tl.zeros([KK_PAD, BLOCK_C], ACC)  # K2 > 0: in the K x K tap layout
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
                yoff = n.to(tl.int64)[:, None, None] * syn + c[None, None, :].to(tl.int64) * syc \
                    + oh[:, :, None] * syh + ow[:, :, None] * syw
                go = tl.load(gp, mask=m3, other=0.0).to(ACC)
                gv = _grad_at(go, y_ptr + yoff, m3, gsc[None, None, :], mu[None, None, :], gm[None, None, :],
                              gv2[None, None, :], GO_SCALE, Y_STATS, ACC)
                wv = tl.load(w_ptr + c[None, :] * (K * K) + kk[:, None], mask=(kk < K * K)[:, None] & cmask[None, :],
                             other=0.0).to(ACC)
                ga = tl.sum(gv * wv[None, :, :], axis=1)
                dw_acc += tl.sum(gv * a[:, None, :], axis=0)
                if K2 > 0:
                    th2 = kk // K - D2
                    tw2 = kk % K - D2
                    inner = (kk < K * K) & (th2 >= 0) & (th2 < K2) & (tw2 >= 0) & (tw2 < K2)
                    m3 = m3 & inner[None, :, None]
                    gv = tl.where(m3, _grad_at(go, y2_ptr + yoff, m3, gsc2[None, None, :], mu2[None, None, :],
                                               gm2[None, None, :], gv22[None, None, :], GO_SCALE, True, ACC), 0.0)
                    w2v = tl.load(w2_ptr + c[None, :] * (K2 * K2) + (th2 * K2 + tw2)[:, None],
                                  mask=inner[:, None] & cmask[None, :], other=0.0).to(ACC)
                    ga += tl.sum(gv * w2v[None, :, :], axis=1)
                    dw2_acc += tl.sum(gv * a[:, None, :], axis=0)
            else:
                ga = _dw_bwd_taps_loop(g_ptr, y_ptr, w_ptr, n, ih, iw, qmask, c, cmask, a, pdw_ptr + pid * (K * K * C),
                                       C, i > 0, OH, OW, sgn, sgc, sgh, sgw, syn, syc, syh, syw, gsc, mu, gm, gv2,
                                       y2_ptr, w2_ptr, pdw2_ptr + pid * (K2 * K2 * C), gsc2, mu2, gm2, gv22, K, K2,
                                       STRIDE, GO_SCALE, Y_STATS, ACC, BLOCK_P, BLOCK_C)
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
            if K2 > 0:  # the inner taps, in the K2 x K2 layout
                th2 = kk // K - D2
                tw2 = kk % K - D2
                inner = (kk < KK) & (th2 >= 0) & (th2 < K2) & (tw2 >= 0) & (tw2 < K2)
                tl.store(pdw2_ptr + pid * (K2 * K2 * C) + (th2 * K2 + tw2)[:, None] * C + c[None, :], dw2_acc,
                         mask=inner[:, None] & cmask[None, :])
        if IN_AFFINE:
            tl.store(pgs_ptr + pid * C + c, gs, mask=cmask)
            tl.store(pgt_ptr + pid * C + c, gt, mask=cmask)


    @triton.jit
    def _repvgg_merge_kernel(w_ptr, w2_ptr, s_ptr, s2_ptr, t_ptr, t2_ptr, wc_ptr, ones_ptr, shift_ptr, C,
                             K: tl.constexpr, K2: tl.constexpr, KK_PAD: tl.constexpr, ACC: tl.constexpr,
                             BLOCK_C: tl.constexpr):
        """A RepVGGDW's BN-scaled, summed weights w * s + pad(w2) * s2 (K x K taps), its shift t + t2 and the unit
        scale the next conv's prologue takes with it."""
        D2: tl.constexpr = (K - K2) // 2
        c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        tap = tl.arange(0, KK_PAD)
        th2 = tap // K - D2
        tw2 = tap % K - D2
        inner = (tap < K * K) & (th2 >= 0) & (th2 < K2) & (tw2 >= 0) & (tw2 < K2)
        m = cmask[:, None] & (tap < K * K)[None, :]
        w = tl.load(w_ptr + c[:, None] * (K * K) + tap[None, :], mask=m, other=0.0).to(ACC)
        w2 = tl.load(w2_ptr + c[:, None] * (K2 * K2) + (th2 * K2 + tw2)[None, :], mask=cmask[:, None] & inner[None, :],
                     other=0.0).to(ACC)
        s = tl.load(s_ptr + c, mask=cmask, other=0.0).to(ACC)
        s2 = tl.load(s2_ptr + c, mask=cmask, other=0.0).to(ACC)
        tl.store(wc_ptr + c[:, None] * (K * K) + tap[None, :], w * s[:, None] + w2 * s2[:, None], mask=m)
        t = tl.load(t_ptr + c, mask=cmask, other=0.0).to(ACC) + tl.load(t2_ptr + c, mask=cmask, other=0.0).to(ACC)
        tl.store(shift_ptr + c, t, mask=cmask)
        tl.store(ones_ptr + c, tl.full([BLOCK_C], 1.0, ACC), mask=cmask)


# ---------------------------------------------------------------------------------------------------- launchers
# ptxas left to itself gives some variants 80-128 registers and spills (its heuristic, not a need): an explicit
# ceiling of the hardware's 255 lets each variant take what it needs (bench.static: none then spills).
MAXNREG = 255

def _tapsvec(x):
    """The interpreter's vectorised-taps path (many times faster there), unless the tests emulate a GPU's grid
    (gpus.emulate): then the GPU's path (staged tiles, tap loops) runs under the interpreter too."""
    return x.device.type != "cuda" and not emulating()


def _blocks(C, spatial, x, K=3, bwd=False, prologue=True, dual=False):
    """(BLOCK_P, BLOCK_C, num_warps). channels_last: wide channel blocks (contiguous); NCHW: wide spatial blocks.
    GPU sizes from ptxas on sm_90a (bench.static), chosen so that no variant spills: a 64x64 tile with the BN + SiLU
    prologue needs 8 warps (without one, 4: at 8 ptxas caps it at 128 registers and spills); the backward over
    input positions, which also holds the activation and its derivative, 32 positions a tile on 8 warps, half that
    for a RepVGGDW's two branches (dual: their statistics terms and grad_out scales)."""
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
    if dual:
        bp //= 2
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


def _launch_fwd(cg, x, weight, stride, in_act, si=None, ti=None, so=None, to=None, out_act=False, residual=None,
                out=None, stats=None, weight2=None, out2=None, stats2=None, grad_out=None, g_sums=None):
    """One _dw_fwd_kernel launch on the grid cg; what is None is not computed (dummy pointers). stats / stats2:
    the per-program (count, mean, M2) partials of the output / of the second weight's output; g_sums: the
    per-program partial sums of grad_out * y and grad_out * y2 (rows 2 pid and 2 pid + 1)."""
    N, C, H, W = x.shape
    K = weight.shape[-1]
    dummy = x.new_empty(1, dtype=acc_dtype(x))

    def ptr(t):
        return t if t is not None else dummy
    with on_device(x):
        _dw_fwd_kernel[cg.grid](
            x, _taps(weight), ptr(si), ptr(ti), ptr(so), ptr(to), ptr(residual), ptr(out),
            *(stats if stats is not None else (dummy,) * 3), _taps(weight2) if weight2 is not None else dummy,
            ptr(out2),
            *(stats2 if stats2 is not None else (dummy,) * 3), ptr(grad_out), ptr(g_sums),
            cg.scratch, C, N, H, W, *_out_hw(H, W, K, stride), cg.nt, cg.per, cg.slot,
            *x.stride(), *strides4(out if out is not None else out2), *strides4(residual), *strides4(grad_out),
            K=K, K2=weight2.shape[-1] if weight2 is not None else 0, STRIDE=stride, IN_AFFINE=si is not None,
            IN_ACT=bool(in_act), OUT_AFFINE=so is not None, OUT_ACT=bool(out_act), HAS_RES=residual is not None,
            WRITE_OUT=out is not None, STATS=stats is not None, G_SUMS=grad_out is not None, ACC=tl_acc(x.dtype),
            TAPS_VEC=_tapsvec(x), KK_PAD=next_pow2(K * K), TILE_W=cg.tile_w, BLOCK_P=cg.BP, BLOCK_C=cg.BC,
            num_warps=cg.nw, maxnreg=MAXNREG)


def _out_hw(H, W, K, stride):
    return conv_out_size(H, K, stride), conv_out_size(W, K, stride)


def _dw_forward(x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride, in_act, out_act,
                write_out, stats):
    N, C, H, W = x.shape
    K = weight.shape[-1]
    OH, OW = _out_hw(H, W, K, stride)
    if residual is not None and tuple(residual.shape) != (N, C, OH, OW):
        raise ValueError(f"residual must have the output's shape {(N, C, OH, OW)}, got {tuple(residual.shape)}")
    sd = acc_dtype(x)
    out = empty_4d((N, C, OH, OW), x) if write_out else x.new_empty(0)
    if N * OH * OW == 0 or C == 0:
        return out, x.new_zeros(C if stats else 0, dtype=sd), x.new_zeros(C if stats else 0, dtype=sd)
    cg = _conv_grid(x, C, N, OH, OW, K, stride, in_scale is not None or bool(in_act))
    partials = partial_stats(cg.grid[0], C, x, sd, True) if stats else None
    _launch_fwd(cg, x, weight, stride, in_act, *(vec(t) for t in (in_scale, in_shift, out_scale, out_shift)),
                out_act, residual, out if write_out else None, partials)
    if stats:
        return (out, *finish_stats(*partials, x))
    return out, x.new_empty(0, dtype=sd), x.new_empty(0, dtype=sd)


def _dw_dual_pass(x, weight, weight2, si, ti, in_act, grad_out=None):
    """Both branches of a RepVGGDW (weight2 centred in weight's taps, stride 1) in one pass over the staged input.
    Without grad_out: their batch statistics (mean, var, mean2, var2), nothing written. With grad_out (backward):
    their raw outputs y, y2 recomputed and written, and (sum grad_out * y, sum grad_out * y2) per channel:
    (y, y2, g_sum, g_sum2)."""
    N, C, H, W = x.shape
    sd = acc_dtype(x)
    cg = _conv_grid(x, C, N, H, W, weight.shape[-1], 1, si is not None or bool(in_act))
    if grad_out is None:
        stats, stats2 = (partial_stats(cg.grid[0], C, x, sd, True) for _ in range(2))
        _launch_fwd(cg, x, weight, 1, in_act, si, ti, stats=stats, weight2=weight2, stats2=stats2)
        return (*finish_stats(*stats, x), *finish_stats(*stats2, x))
    y, y2 = empty_4d(tuple(x.shape), x), empty_4d(tuple(x.shape), x)
    g_sums = empty((cg.grid[0], 2, C), x, sd)
    _launch_fwd(cg, x, weight, 1, in_act, si, ti, out=y, weight2=weight2, out2=y2, grad_out=grad_out,
                g_sums=g_sums)
    g = sum_partials(g_sums, empty(2 * C, x, sd))
    return y, y2, g[:C], g[C:]


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
    OH, OW = _out_hw(H, W, K, stride)
    sd = acc_dtype(x)
    dummy = x.new_empty(1, dtype=sd)
    has_go, stats = grad_out is not None, grad_mean is not None
    g = out if out is not None else empty_4d((N, C, OH, OW), x, dtype=sd)
    NP = N * OH * OW
    cg = _conv_grid(x, C, N, OH, OW, K, stride, si is not None or bool(in_act))
    pgos = empty((cg.grid[0], C), x, sd) if so is not None else dummy
    pgot = empty((cg.grid[0], C), x, sd) if so is not None else dummy
    with on_device(x):
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


def _input_grad_pass(g, x, weight, w, si, ti, stride, in_act, y=None, mean=None, grad_mean=None, grad_var=None,
                     g_scale=None, second=None):
    """(grad x, grad weight, grad in_scale, grad in_shift) from g = d loss / d y: one pass over input positions
    and the on-device sums of its per-program partials. With the saved raw output y, g is grad_out and the batch
    statistics' term is added on the fly (see _grad_at); g_scale: y reached grad_out scaled per channel.
    second = (weight2, y2, mean2, grad_mean2, grad_var2, g_scale2): a second depthwise weight over the same input
    (a RepVGGDW's small branch): grad x sums both branches, and its weight gradient comes last."""
    N, C, H, W = x.shape
    K = weight.shape[-1]
    OH, OW = _out_hw(H, W, K, stride)
    sd = acc_dtype(x)
    dummy = x.new_empty(1, dtype=sd)
    gx = empty_4d((N, C, H, W), x)
    NP = N * H * W
    BP, BC, nw = _blocks(C, NP, x, K, bwd=True, dual=second is not None)
    cblk = triton.cdiv(C, BC)
    splits, per = split_tiles(triton.cdiv(NP, BP), cblk, x.device)
    pdw = empty((splits, K * K, C), x, sd)
    pgs = empty((splits, C), x, sd) if si is not None else dummy
    pgt = empty((splits, C), x, sd) if si is not None else dummy
    y_stats = y is not None
    w2, y2, mean2, gm2, gv2, g_scale2 = second if second is not None else (None,) * 6
    K2 = w2.shape[-1] if second is not None else 0
    pdw2 = empty((splits, K2 * K2, C), x, sd) if K2 else dummy
    with on_device(x):
        _dw_bwd_kernel[(splits, cblk)](
            x, w, si if si is not None else dummy, ti if ti is not None else dummy, g, y if y_stats else dummy,
            *((vec(mean), vec(grad_mean), vec(grad_var)) if y_stats else (dummy,) * 3), 1.0 / (N * OH * OW),
            gx, pdw, pgs, pgt, vec(g_scale) if g_scale is not None else dummy,
            *((_taps(w2), y2, vec(mean2), vec(gm2), vec(gv2)) if K2 else (dummy,) * 5),
            vec(g_scale2) if g_scale2 is not None else dummy, pdw2,
            C, H, W, OH, OW, NP, per,
            *x.stride(), *g.stride(), *strides4(y), *gx.stride(),
            K=K, K2=K2, STRIDE=stride, IN_AFFINE=si is not None, IN_ACT=bool(in_act), GO_SCALE=g_scale is not None,
            Y_STATS=y_stats, ACC=tl_acc(x.dtype), TAPS_VEC=_tapsvec(x), KK_PAD=next_pow2(K * K), BLOCK_P=BP,
            BLOCK_C=BC, num_warps=nw, maxnreg=MAXNREG)
    gws = [sum_partials(pdw, torch.empty_like(weight, memory_format=torch.contiguous_format), taps=K * K)]
    if K2:
        gws.append(sum_partials(pdw2, torch.empty_like(w2, memory_format=torch.contiguous_format), taps=K2 * K2))
    if si is None:
        return gx, *gws, x.new_empty(0, dtype=sd), x.new_empty(0, dtype=sd)
    return gx, *gws, sum_partials(pgs, empty(C, x, sd)), sum_partials(pgt, empty(C, x, sd))


def _dw_backward(grad_out, grad_mean, grad_var, x, weight, in_scale, in_shift, out_scale, out_shift, mean, y,
                 stride, in_act, out_act, write_out, stats):
    N, C, H, W = x.shape
    K = weight.shape[-1]
    OH, OW = _out_hw(H, W, K, stride)
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
    out = empty_4d((N, C, *_out_hw(H, W, K, stride)), x) if write_out else x.new_empty(0)
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
    OH, OW = _out_hw(H, W, K, stride)
    count = N * OH * OW
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


# ------------------------------------------------------------------------------------------- a RepVGGDW in training
# Its two branches (a k x k and a centred k2 x k2 depthwise conv of one input, each with a BN on batch statistics,
# summed) as one op. Forward: one statistics-only pass over the staged input gives both branches' statistics; a BN
# affine per branch; one small kernel merges the BN-scaled weights w * s + pad(w2) * s2 and the shift; one conv
# pass writes z = conv(a, merged) (the next conv adds the shift and applies the act in its prologue). Backward: one
# pass recomputes both raw outputs (written) with the BN scales' gradients (sum gz * y, sum gz * y2), the BN
# affine backward per branch, and one pass over input positions forms each branch's gradient s * gz + statistics
# term on the fly from gz and the recomputed outputs: grad x and both weights' gradients. Per step that is two
# reads of the input, one of gz and the input-gradient sum fewer than two statistics-only ops plus a conv op.
def _repvgg_merge(weight, weight2, scale, scale2, shift, shift2):
    C, K, K2 = weight.shape[0], weight.shape[-1], weight2.shape[-1]
    wc = empty((C, 1, K, K), scale)
    ones, out_shift = empty(C, scale), empty(C, scale)
    block = min(max(next_pow2(C), 16), 32)  # a [channels x taps] tile: wider spills
    with on_device(scale):
        _repvgg_merge_kernel[(triton.cdiv(C, block),)](_taps(weight), _taps(weight2), scale, scale2, shift, shift2, wc,
                                                       ones, out_shift, C, K=K, K2=K2, KK_PAD=next_pow2(K * K),
                                                       ACC=tl_acc(scale.dtype), BLOCK_C=block)
    return wc, ones, out_shift


def _check_repvgg(x, weight, weight2, in_scale, in_shift):
    _check_args(x, weight, in_scale, in_shift, None, None, None, 1)
    _check_args(x, weight2, None, None, None, None, None, 1)
    if weight2.shape[-1] > weight.shape[-1]:
        raise ValueError(f"weight2 must be the smaller kernel: got {tuple(weight.shape)} and {tuple(weight2.shape)}")


@torch.library.custom_op(op_name("dw_repvgg_bn"),
                         mutates_args=("running_mean", "running_var", "num_batches_tracked", "running_mean2",
                                       "running_var2", "num_batches_tracked2"))
def dw_repvgg_bn(x: Tensor, weight: Tensor, weight2: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor],
                 bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], running_mean: Optional[Tensor],
                 running_var: Optional[Tensor], num_batches_tracked: Optional[Tensor],
                 bn_weight2: Optional[Tensor], bn_bias2: Optional[Tensor], running_mean2: Optional[Tensor],
                 running_var2: Optional[Tensor], num_batches_tracked2: Optional[Tensor], in_act: bool, eps: float,
                 momentum: Optional[float], eps2: float, momentum2: Optional[float], update: bool
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """z = depthwise_conv(a, w * s + pad(w2 * s2)) with a = in_act(x * in_scale + in_shift) and (s, t), (s2, t2)
    the BN affines of the two branches' batch statistics (running statistics updated when `update`): the
    RepVGGDW's pre-activation is z * ones + shift. Returns (z, ones, shift, mean, var, mean2, var2, scale, scale2),
    all but z per channel in the accumulation dtype."""
    _check_repvgg(x, weight, weight2, in_scale, in_shift)
    si, ti = vec(in_scale), vec(in_shift)
    mean, var, mean2, var2 = _dw_dual_pass(x, weight, weight2, si, ti, in_act)
    count = float(x.shape[0] * x.shape[2] * x.shape[3])
    scale, shift = affine_from_stats(mean, var, bn_weight, bn_bias, running_mean, running_var, num_batches_tracked,
                                     count, eps, momentum, update)
    scale2, shift2 = affine_from_stats(mean2, var2, bn_weight2, bn_bias2, running_mean2, running_var2,
                                       num_batches_tracked2, count, eps2, momentum2, update)
    wc, ones, out_shift = _repvgg_merge(weight, weight2, scale, scale2, shift, shift2)
    z = _dw_forward(x, wc, in_scale, in_shift, None, None, None, 1, in_act, False, True, False)[0]
    return z, ones, out_shift, mean, var, mean2, var2, scale, scale2


@dw_repvgg_bn.register_fake
def _dw_repvgg_bn_fake(x, weight, weight2, in_scale, in_shift, bn_weight, bn_bias, running_mean, running_var,
                       num_batches_tracked, bn_weight2, bn_bias2, running_mean2, running_var2, num_batches_tracked2,
                       in_act, eps, momentum, eps2, momentum2, update):
    _check_repvgg(x, weight, weight2, in_scale, in_shift)
    return (empty_4d(tuple(x.shape), x), *(x.new_empty(x.shape[1], dtype=acc_dtype(x)) for _ in range(8)))


@torch.library.custom_op(op_name("dw_repvgg_bn_backward"), mutates_args=())
def dw_repvgg_bn_backward(grad_z: Tensor, grad_shift: Optional[Tensor], x: Tensor, weight: Tensor, weight2: Tensor,
                          in_scale: Optional[Tensor], in_shift: Optional[Tensor], mean: Tensor, var: Tensor, scale: Tensor, mean2: Tensor, var2: Tensor, scale2: Tensor,
                          bn_weight: Optional[Tensor], bn_weight2: Optional[Tensor], has_bias: bool,
                          bias_dtype: torch.dtype, eps: float, eps2: float, in_act: bool
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad x, grad weight, grad weight2, grad in_scale, grad in_shift, grad BN weight, grad BN bias, grad BN2
    weight, grad BN2 bias); empty where absent. The branches' raw outputs are recomputed (with the BN scales'
    gradients, sum grad_z * y) rather than saved: a training step holds less, and moves fewer bytes in all."""
    si, ti = vec(in_scale), vec(in_shift)
    y, y2, g_scale, g_scale2 = _dw_dual_pass(x, weight, weight2, si, ti, in_act, grad_out=grad_z)
    g_mean, g_var, g_bw, g_bb = affine_grads(g_scale, grad_shift, mean, var, bn_weight, has_bias, bias_dtype, eps)
    g_mean2, g_var2, g_bw2, g_bb2 = affine_grads(g_scale2, grad_shift, mean2, var2, bn_weight2, has_bias, bias_dtype,
                                                 eps2)
    gx, gw, gw2, g_is, g_it = _input_grad_pass(grad_z, x, weight, _taps(weight), si, ti, 1, in_act, y, mean, g_mean,
                                               g_var, scale, (weight2, y2, mean2, g_mean2, g_var2, scale2))
    return gx, gw, gw2, g_is, g_it, g_bw, g_bb, g_bw2, g_bb2


@dw_repvgg_bn_backward.register_fake
def _dw_repvgg_bn_backward_fake(grad_z, grad_shift, x, weight, weight2, in_scale, in_shift, mean, var, scale,
                                mean2, var2, scale2, bn_weight, bn_weight2, has_bias, bias_dtype, eps, eps2, in_act):
    C = x.shape[1]
    sd = acc_dtype(x)

    def like(t, own_dtype=False):
        return x.new_empty(C if t is not None else 0, dtype=t.dtype if own_dtype and t is not None else sd)
    return (empty_4d(tuple(x.shape), x), torch.empty_like(weight, memory_format=torch.contiguous_format),
            torch.empty_like(weight2, memory_format=torch.contiguous_format), like(in_scale), like(in_shift),
            like(bn_weight, True), x.new_empty(C if has_bias else 0, dtype=bias_dtype), like(bn_weight2, True),
            x.new_empty(C if has_bias else 0, dtype=bias_dtype))


class _DwRepVGG(torch.autograd.Function):
    """Autograd of dw_repvgg_bn (an op that updates running statistics cannot register its own)."""

    @staticmethod
    def forward(ctx, x, weight, weight2, in_scale, in_shift, bn, bn2, in_act, bn_weight, bn_bias, bn_weight2,
                bn_bias2):
        z, ones, shift, mean, var, mean2, var2, scale, scale2 = dw_repvgg_bn(
            x, weight, weight2, in_scale, in_shift, bn_weight, bn_bias, bn.running_mean, bn.running_var,
            bn.num_batches_tracked, bn_weight2, bn_bias2, bn2.running_mean, bn2.running_var, bn2.num_batches_tracked,
            in_act, float(bn.eps), bn.momentum, float(bn2.eps), bn2.momentum, bool(bn.training))
        ctx.save_for_backward(x, weight, weight2, in_scale, in_shift, mean, var, scale, mean2, var2, scale2,
                              bn_weight, bn_weight2)
        ctx.cfg = (in_act, float(bn.eps), float(bn2.eps), bn_bias is not None,
                   bn_bias.dtype if bn_bias is not None else mean.dtype)
        ctx.mark_non_differentiable(ones)
        return z, ones, shift

    @staticmethod
    def backward(ctx, grad_z, _grad_ones, grad_shift):
        x, weight, weight2, in_scale, in_shift, mean, var, scale, mean2, var2, scale2, bn_w, bn_w2 = ctx.saved_tensors
        in_act, eps, eps2, has_bias, bias_dtype = ctx.cfg
        gx, gw, gw2, g_is, g_it, g_bw, g_bb, g_bw2, g_bb2 = dw_repvgg_bn_backward(
            grad_z, grad_shift, x, weight, weight2, in_scale, in_shift, mean, var, scale, mean2, var2, scale2, bn_w,
            bn_w2, has_bias, bias_dtype, eps, eps2, in_act)
        return (gx, gw, gw2, grad_like(g_is, in_scale), grad_like(g_it, in_shift), None, None, None,
                g_bw if bn_w is not None else None, g_bb if has_bias else None,
                g_bw2 if bn_w2 is not None else None, g_bb2 if has_bias else None)


def dw_repvgg_train(x, weight, in_scale, in_shift, weight2, bn, bn2, in_act):
    """A RepVGGDW in a training chain with both BNs on batch statistics (see dw_repvgg_bn): (z, ones, shift),
    the pre-activation being z * ones + shift; differentiable in x, both weights, the input affine and both BNs'
    weights and biases. bn, bn2: nn.BatchNorm2d or BatchNormSpec (bn: the large kernel's)."""
    return _DwRepVGG.apply(x, weight, weight2, in_scale, in_shift, bn, bn2, in_act, bn.weight, bn.bias, bn2.weight,
                           bn2.bias)
