"""The Triton kernels of the depthwise ops (dwconv.py, dw_conv_bn_act.py, dw_repvgg_bn.py): one conv pass over
output tiles (_dw_conv_kernel: a forward with its prologue / epilogue / statistics, or the recompute pass of a
backward), the gradient w.r.t. a conv's raw output (_dw_grad_y_kernel), grad x and the weight partials over input
positions (_dw_bwd_kernel) and the RepVGGDW weight merge.

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
come from ptxas on every GPU profile (bench.static): no variant spills."""
from .utils import tl, triton

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
    def _dw_conv_kernel(x_ptr, w_ptr, is_ptr, it_ptr, os_ptr, ot_ptr, r_ptr, y_ptr, pcnt_ptr, pmean_ptr, pm2_ptr,
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
