"""The Triton kernels of the eval-mode chains (chain_eval.py): dw_pw, dw_pw_pw, pw_dw and dw_pw_dw, their
autotune configs and the prunes that keep the configs the GPU at hand can launch (gpus.device_profile)."""
from ..gpus import device_profile, smem_estimate
from .utils import autotune, config, tl, triton

if triton is not None:  # without triton the ops import, and their launchers raise (utils.check_device)
    @triton.jit
    def _silu(x):
        return x * tl.sigmoid(x)

    @triton.jit
    def _dw_tap(acc, base, h, w, pmask, kk, kmask, H, W, sxh, sxw, dww_ptr, K, t, dy, dx):
        hh = h + dy
        ww = w + dx
        m = pmask & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        xv = tl.load(base + (dy * sxh + dx * sxw), mask=m[:, None] & kmask[None, :], other=0.0)
        wv = tl.load(dww_ptr + t * K + kk, mask=kmask, other=0.0)
        return acc + xv.to(acc.dtype) * wv[None, :]

    @triton.jit
    def _dw_tile(x_ptr, pix_off, h, w, pmask, kk, kmask, H, W, sxc, sxh, sxw, dww_ptr, dwb_ptr, K,
                 KS: tl.constexpr, ACT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
        """Depthwise KSxKS conv (stride 1, zero padding KS//2) + bias (+SiLU) at pixels (h, w) for channels kk:
        a (BLOCK_P, BLOCK_K) tile in the weights' dtype (fp32/fp64). Rows with pmask False hold garbage.
        3x3 taps are all unrolled. Larger kernels (the folded RepVGGDW 7x7) unroll the taps of a row and loop over
        the rows: 49 unrolled taps get software-pipelined into >200 KB of shared memory and spill (sm_90a, bf16),
        and a row loop keeps the taps' masks and offsets from being hoisted out of the K loop all at once."""
        PAD: tl.constexpr = KS // 2
        acc = tl.zeros((BLOCK_P, BLOCK_K), dtype=dww_ptr.dtype.element_ty)
        base = x_ptr + (pix_off + h * sxh + w * sxw)[:, None] + (kk * sxc)[None, :]
        if KS <= 3:
            for t in tl.static_range(KS * KS):
                acc = _dw_tap(acc, base, h, w, pmask, kk, kmask, H, W, sxh, sxw, dww_ptr, K, t, t // KS - PAD, t % KS - PAD)
        else:
            for i in range(KS):
                for j in tl.static_range(KS):
                    acc = _dw_tap(acc, base, h, w, pmask, kk, kmask, H, W, sxh, sxw, dww_ptr, K, i * KS + j, i - PAD,
                                  j - PAD)
        acc += tl.load(dwb_ptr + kk, mask=kmask, other=0.0)[None, :]
        if ACT:
            acc = _silu(acc)
        return acc

    @triton.jit(do_not_specialize=["NPIX", "PIX_BUCKET", "H", "W"])
    def _dw_pw_kernel(x_ptr, dww_ptr, dwb_ptr, pww_ptr, pwb_ptr, out_ptr,
                      NPIX, PIX_BUCKET, H, W, K, N,
                      sxb, sxc, sxh, sxw, sob, soc, soh, sow,
                      KS: tl.constexpr, ACT_DW: tl.constexpr, ACT_PW: tl.constexpr, DOT_PREC: tl.constexpr,
                      BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """out[p, n] = act(b_pw[n] + sum_k Wpw[k, n] * act(DW(x)[p, k])): DW -> PW with the DW tile in registers.
        Program = (pixel block, output-channel block), channel block fastest so neighbours share the x tile in L2."""
        pid = tl.program_id(0)
        num_nb = tl.cdiv(N, BLOCK_N)
        nb = pid % num_nb
        pb = pid // num_nb
        p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = p < NPIX
        hw = p % (H * W)
        b = (p // (H * W)).to(tl.int64)
        h = hw // W
        w = hw % W
        nn = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = nn < N
        dot_t = x_ptr.dtype.element_ty
        acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=pww_ptr.dtype.element_ty)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            kmask = kk < K
            a = _dw_tile(x_ptr, b * sxb, h, w, pmask, kk, kmask, H, W, sxc, sxh, sxw, dww_ptr, dwb_ptr, K,
                         KS, ACT_DW, BLOCK_P, BLOCK_K)
            wt = tl.load(pww_ptr + kk[:, None] * N + nn[None, :], mask=kmask[:, None] & nmask[None, :], other=0.0)
            acc += tl.dot(a.to(dot_t), wt.to(dot_t), input_precision=DOT_PREC)
        acc += tl.load(pwb_ptr + nn, mask=nmask, other=0.0)[None, :]
        if ACT_PW:
            acc = _silu(acc)
        optr = out_ptr + (b * sob + h * soh + w * sow)[:, None] + (nn * soc)[None, :]
        tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=pmask[:, None] & nmask[None, :])

    @triton.jit(do_not_specialize=["NPIX", "PIX_BUCKET", "H", "W"])
    def _dw_pw_pw_kernel(x_ptr, dww_ptr, dwb_ptr, pww_ptr, pwb_ptr, pw2w_ptr, pw2b_ptr, out_ptr,
                         NPIX, PIX_BUCKET, H, W, K, N1, N2,
                         sxb, sxc, sxh, sxw, sob, soc, soh, sow,
                         KS: tl.constexpr, ACT_DW: tl.constexpr, ACT_PW: tl.constexpr, ACT_PW2: tl.constexpr,
                         DOT_PREC: tl.constexpr, N1P: tl.constexpr,
                         BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N2: tl.constexpr):
        """DW -> PW (K -> N1, all N1 channels of a pixel block in registers) -> PW (N1 -> N2, + bias)."""
        pid = tl.program_id(0)
        p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = p < NPIX
        hw = p % (H * W)
        b = (p // (H * W)).to(tl.int64)
        h = hw // W
        w = hw % W
        n1 = tl.arange(0, N1P)
        n1mask = n1 < N1
        dot_t = x_ptr.dtype.element_ty
        acc = tl.zeros((BLOCK_P, N1P), dtype=pww_ptr.dtype.element_ty)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            kmask = kk < K
            a = _dw_tile(x_ptr, b * sxb, h, w, pmask, kk, kmask, H, W, sxc, sxh, sxw, dww_ptr, dwb_ptr, K,
                         KS, ACT_DW, BLOCK_P, BLOCK_K)
            wt = tl.load(pww_ptr + kk[:, None] * N1 + n1[None, :], mask=kmask[:, None] & n1mask[None, :], other=0.0)
            acc += tl.dot(a.to(dot_t), wt.to(dot_t), input_precision=DOT_PREC)
        acc += tl.load(pwb_ptr + n1, mask=n1mask, other=0.0)[None, :]
        if ACT_PW:
            acc = _silu(acc)  # padded channels stay exactly 0 (zero weights, zero bias, silu(0) = 0)
        hid = acc.to(dot_t)
        obase = (b * sob + h * soh + w * sow)[:, None]
        for n0 in range(0, N2, BLOCK_N2):
            n2 = n0 + tl.arange(0, BLOCK_N2)
            n2mask = n2 < N2
            w2 = tl.load(pw2w_ptr + n1[:, None] * N2 + n2[None, :], mask=n1mask[:, None] & n2mask[None, :], other=0.0)
            o = tl.dot(hid, w2.to(dot_t), input_precision=DOT_PREC).to(acc.dtype)
            o += tl.load(pw2b_ptr + n2, mask=n2mask, other=0.0)[None, :]
            if ACT_PW2:
                o = _silu(o)
            tl.store(out_ptr + obase + (n2 * soc)[None, :], o.to(out_ptr.dtype.element_ty),
                     mask=pmask[:, None] & n2mask[None, :])

    @triton.jit(do_not_specialize=["NQ", "PIX_BUCKET", "H", "W", "HO", "WO"])
    def _pw_dw_kernel(x_ptr, pww_ptr, pwb_ptr, dww_ptr, dwb_ptr, out_ptr,
                      NQ, PIX_BUCKET, H, W, HO, WO, K, N,
                      sxb, sxc, sxh, sxw, sob, soc, soh, sow,
                      KS: tl.constexpr, STRIDE: tl.constexpr, ACT_PW: tl.constexpr, ACT_DW: tl.constexpr,
                      DOT_PREC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """out[q, n] = act(b_dw[n] + sum_t Wdw[t, n] * act(PW(x)[q*s + t, n])): PW -> DW (stride s). The PW output
        at each tap's input pixel is recomputed in registers (9 small matmuls per tile; for stride 2 that is 9/4 of
        the unfused PW work, traded for never writing the PW output, which is 4x the size of the block's output).
        The tap loop is a runtime loop: unrolled, its 9 K loops keep every tap's addresses and masks live and spill
        ~4.7 KB per thread (sm_90a, bf16); each tap is a whole K loop of matmuls, so unrolling buys no overlap."""
        PAD: tl.constexpr = KS // 2
        pid = tl.program_id(0)
        num_nb = tl.cdiv(N, BLOCK_N)
        nb = pid % num_nb
        qb = pid // num_nb
        q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
        qmask = q < NQ
        ohw = q % (HO * WO)
        b = (q // (HO * WO)).to(tl.int64)
        oh = ohw // WO
        ow = ohw % WO
        nn = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = nn < N
        dot_t = x_ptr.dtype.element_ty
        pwb = tl.load(pwb_ptr + nn, mask=nmask, other=0.0)
        out = tl.zeros((BLOCK_Q, BLOCK_N), dtype=pww_ptr.dtype.element_ty)
        for t in range(KS * KS):
            ih = oh * STRIDE + (t // KS - PAD)
            iw = ow * STRIDE + (t % KS - PAD)
            valid = qmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            xrow = x_ptr + (b * sxb + ih * sxh + iw * sxw)[:, None]
            acc = tl.zeros((BLOCK_Q, BLOCK_N), dtype=pww_ptr.dtype.element_ty)
            for k0 in range(0, K, BLOCK_K):
                kk = k0 + tl.arange(0, BLOCK_K)
                kmask = kk < K
                xv = tl.load(xrow + (kk * sxc)[None, :], mask=valid[:, None] & kmask[None, :], other=0.0)
                wt = tl.load(pww_ptr + kk[:, None] * N + nn[None, :], mask=kmask[:, None] & nmask[None, :], other=0.0)
                acc += tl.dot(xv.to(dot_t), wt.to(dot_t), input_precision=DOT_PREC)
            y = acc + pwb[None, :]
            if ACT_PW:
                y = _silu(y)
            y = tl.where(valid[:, None], y, 0.0)  # zero padding of the PW output
            out += y * tl.load(dww_ptr + t * N + nn, mask=nmask, other=0.0)[None, :]
        out += tl.load(dwb_ptr + nn, mask=nmask, other=0.0)[None, :]
        if ACT_DW:
            out = _silu(out)
        optr = out_ptr + (b * sob + oh * soh + ow * sow)[:, None] + (nn * soc)[None, :]
        tl.store(optr, out.to(out_ptr.dtype.element_ty), mask=qmask[:, None] & nmask[None, :])

    @triton.jit(do_not_specialize=["B", "PIX_BUCKET", "H", "W"])
    def _dw_pw_dw_kernel(x_ptr, dw1w_ptr, dw1b_ptr, pww_ptr, pwb_ptr, dw2w_ptr, dw2b_ptr, res_ptr, out_ptr, scr_ptr,
                         B, PIX_BUCKET, H, W, K, N,
                         sxb, sxc, sxh, sxw, srb, src, srh, srw, sob, soc, soh, sow,
                         KS1: tl.constexpr, KS2: tl.constexpr, ACT1: tl.constexpr, ACT_PW: tl.constexpr,
                         ACT2: tl.constexpr, HAS_RES: tl.constexpr, DOT_PREC: tl.constexpr,
                         BLOCK_E: tl.constexpr, MAX_EW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """DW KS1 (+SiLU) -> PW (+SiLU) -> DW KS2 (+SiLU) (+ residual), all stride 1.

        Persistent: each program loops over (image, spatial tile, output-channel block) work items. For a tile of
        TH x TW output pixels it computes the PW output on the tile plus a KS2//2 halo (EH x EW <= BLOCK_E pixels,
        flattened) for BLOCK_N channels, parks it in its own scratch slot (BLOCK_E x BLOCK_N, reused every
        iteration, so it stays in L1/L2), then runs the second DW from there."""
        P2: tl.constexpr = KS2 // 2
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        EW = tl.minimum(W + 2 * P2, MAX_EW)
        EH = BLOCK_E // EW
        TW = EW - 2 * P2
        TH = EH - 2 * P2
        tiles_w = tl.cdiv(W, TW)
        tiles_h = tl.cdiv(H, TH)
        num_nb = tl.cdiv(N, BLOCK_N)
        total = B * tiles_h * tiles_w * num_nb
        e = tl.arange(0, BLOCK_E)
        er = e // EW
        ec = e % EW
        in_ext = e < EH * EW
        orow = e // TW
        ocol = e % TW
        in_tile = e < TH * TW
        nl = tl.arange(0, BLOCK_N)
        scr = scr_ptr + pid * (BLOCK_E * BLOCK_N)
        dot_t = x_ptr.dtype.element_ty
        for work in range(pid, total, nprog):
            nb = work % num_nb
            tile = work // num_nb
            tw_i = tile % tiles_w
            th_i = (tile // tiles_w) % tiles_h
            b = (tile // (tiles_w * tiles_h)).to(tl.int64)
            nn = nb * BLOCK_N + nl
            nmask = nn < N
            # stage 1: DW1 -> PW on the tile + halo
            h = th_i * TH - P2 + er
            w = tw_i * TW - P2 + ec
            emask = in_ext & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            acc = tl.zeros((BLOCK_E, BLOCK_N), dtype=pww_ptr.dtype.element_ty)
            for k0 in range(0, K, BLOCK_K):
                kk = k0 + tl.arange(0, BLOCK_K)
                kmask = kk < K
                a = _dw_tile(x_ptr, b * sxb, h, w, emask, kk, kmask, H, W, sxc, sxh, sxw, dw1w_ptr, dw1b_ptr, K,
                             KS1, ACT1, BLOCK_E, BLOCK_K)
                wt = tl.load(pww_ptr + kk[:, None] * N + nn[None, :], mask=kmask[:, None] & nmask[None, :], other=0.0)
                acc += tl.dot(a.to(dot_t), wt.to(dot_t), input_precision=DOT_PREC)
            acc += tl.load(pwb_ptr + nn, mask=nmask, other=0.0)[None, :]
            if ACT_PW:
                acc = _silu(acc)
            acc = tl.where(emask[:, None], acc, 0.0)  # zero padding for DW2
            tl.debug_barrier()  # every thread is done reading the previous work item's scratch
            tl.store(scr + e[:, None] * BLOCK_N + nl[None, :], acc.to(scr_ptr.dtype.element_ty))
            tl.debug_barrier()  # the whole tile is in scratch
            # stage 2: DW2 from scratch
            oh = th_i * TH + orow
            ow = tw_i * TW + ocol
            omask = in_tile & (oh < H) & (ow < W)
            o = tl.zeros((BLOCK_E, BLOCK_N), dtype=pww_ptr.dtype.element_ty)
            # a row loop: with all KS2 x KS2 taps unrolled, their scratch offsets are hoisted out of the work loop
            # and the kernel spills (0.7-1.9 KB per thread on sm_90a, bf16)
            for i in range(KS2):
                srow = scr + ((orow + i) * EW + ocol)[:, None] * BLOCK_N + nl[None, :]
                for j in tl.static_range(KS2):
                    v = tl.load(srow + j * BLOCK_N, mask=omask[:, None], other=0.0)
                    o += v.to(o.dtype) * tl.load(dw2w_ptr + (i * KS2 + j) * N + nn, mask=nmask, other=0.0)[None, :]
            o += tl.load(dw2b_ptr + nn, mask=nmask, other=0.0)[None, :]
            if ACT2:
                o = _silu(o)
            m2 = omask[:, None] & nmask[None, :]
            if HAS_RES:
                r = tl.load(res_ptr + (b * srb + oh * srh + ow * srw)[:, None] + (nn * src)[None, :], mask=m2, other=0.0)
                o += r.to(o.dtype)
            tl.store(out_ptr + (b * sob + oh * soh + ow * sow)[:, None] + (nn * soc)[None, :],
                     o.to(out_ptr.dtype.element_ty), mask=m2)

    # ----------------------------------------------------------------------------------------------------------
    # Autotuning on a GPU (utils.autotune). The interpreter cannot autotune over several configs: there
    # utils.launch_tuned calls the bare kernel with blocks sized to the problem (capped by INTERPRET_MAX_BLOCK) to
    # keep the interpreted programs few.
    # ----------------------------------------------------------------------------------------------------------
    def _config(**kw):
        # no register ceiling here: with one (any value, even above what they use) LLVM schedules these kernels
        # differently and ptxas spills (sm_90a, bf16 dw_pw 64x64x32: 193 registers, no spill without; 200 and
        # 20-40 bytes of spill with maxnreg 200-255)
        return config(maxnreg=None, **kw)

    # The sizes that change with the batch and the image (pixel counts, B, H, W) are not specialised on
    # (do_not_specialize) and the autotune keys hold PIX_BUCKET (utils.size_bucket of one image's pixel count)
    # instead of them: a new batch size never re-tunes, an image size or rectangular validation shape only when it
    # moves the per-image pixel count to another bucket, and neither recompiles. (The strides stay specialised:
    # channels_last strides are multiples of the channel count, so their divisibility by 16, which the vectorised
    # loads rely on, does not change with B, H, W.)
    # Every config compiles for sm_90a without spills in bf16 and fp16 at the yolov10n/s/m shapes; configs whose
    # predicted shared memory does not fit the GPU at hand (its gpus profile: 227 KB on sm_90, 99 KB on an RTX
    # 3090 / 4090, 64 KB on a T4; fp32 tiles take twice bf16's) are pruned before launch, never timed
    # (bench/static.py compiles what is left for every profile and checks it).
    _DW_PW_CONFIGS = [
        _config(BLOCK_P=64, BLOCK_N=64, BLOCK_K=32, num_warps=4),
        _config(BLOCK_P=128, BLOCK_N=64, BLOCK_K=32, num_warps=8),
        _config(BLOCK_P=64, BLOCK_N=128, BLOCK_K=32, num_warps=8),
        _config(BLOCK_P=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
        _config(BLOCK_P=32, BLOCK_N=32, BLOCK_K=32, num_warps=4),
    ]
    _DW_PW_PW_CONFIGS = [
        _config(BLOCK_P=16, BLOCK_K=32, BLOCK_N2=64, num_warps=4),
        _config(BLOCK_P=32, BLOCK_K=32, BLOCK_N2=64, num_warps=4),
        _config(BLOCK_P=32, BLOCK_K=32, BLOCK_N2=32, num_warps=8),
        _config(BLOCK_P=64, BLOCK_K=32, BLOCK_N2=64, num_warps=8),
        # for FMA dots (a T4: every tile in registers) at 256 hidden channels; tensor-core GPUs never time it
        _config(BLOCK_P=16, BLOCK_K=16, BLOCK_N2=32, num_warps=8),
    ]
    _PW_DW_CONFIGS = [
        _config(BLOCK_Q=64, BLOCK_N=64, BLOCK_K=32, num_warps=4),
        _config(BLOCK_Q=128, BLOCK_N=64, BLOCK_K=32, num_warps=8),
        _config(BLOCK_Q=64, BLOCK_N=128, BLOCK_K=32, num_warps=8),
        _config(BLOCK_Q=32, BLOCK_N=32, BLOCK_K=32, num_warps=4),
    ]
    # BLOCK_E // MAX_EW >= 3 (a tile needs >= 1 output row besides the halo). Tiles of 16 K elements (E256 x N64,
    # E128 x N128) spill: the PW accumulator and the DW2 accumulator are both live.
    _DW_PW_DW_CONFIGS = [
        _config(BLOCK_E=64, MAX_EW=16, BLOCK_N=64, BLOCK_K=32, num_warps=4),
        _config(BLOCK_E=128, MAX_EW=32, BLOCK_N=64, BLOCK_K=32, num_warps=8),
        _config(BLOCK_E=64, MAX_EW=16, BLOCK_N=32, BLOCK_K=32, num_warps=8),  # fp32 only: see _prune_dw_pw_dw
        _config(BLOCK_E=64, MAX_EW=16, BLOCK_N=32, BLOCK_K=32, num_warps=4),  # more programs for batch-1 P5 maps
    ]

    # Configs that spill registers on one architecture, as compiled there by bench.static (ptxas' occupancy
    # heuristic caps some 4-warp variants at 96-168 registers on sm_80 / sm_100 / sm_120; fp32 tiles of 64 x 64
    # outgrow 255 on sm_100): kernel -> {arch: {(element bytes, block sizes + warps)}}, pruned there like a config
    # that does not fit. tests/test_gpu_budgets.py fails on any spill in the report: a missing entry shows up.
    _SPILLS = {
        "dw_pw": {80: {(4, (64, 64, 32, 4))},
                  100: {(4, (64, 64, 32, 4)), (4, (128, 64, 32, 8)), (2, (32, 32, 32, 4))},
                  120: {(2, (32, 32, 32, 4))}},
        "dw_pw_dw": {100: {(4, (64, 16, 64, 32, 4)), (4, (64, 16, 32, 32, 4))},
                     120: {(2, (64, 16, 32, 32, 4)), (4, (64, 16, 32, 32, 4))}},
        "pw_dw": {120: {(4, (64, 64, 32, 4))}},
    }

    # fp64 (gradcheck, the exact references) on a GPU: one small config per kernel. The tuned configs' fp64 tiles
    # need up to 172 KB at yolov10m's channel counts (the hidden channels' weight tile, the 7x7 DW's staged loads),
    # and even the smallest tuned one is over a T4's 64 KB / a 99 KB GPU's limit there (tests/test_gpu_budgets.py
    # compiles these for every profile's target; the static report covers fp16/bf16/fp32 only).
    _FP64_CONFIGS = {"dw_pw_pw": _config(BLOCK_P=16, BLOCK_K=16, BLOCK_N2=16, num_warps=4),
                     "dw_pw_dw": _config(BLOCK_E=32, MAX_EW=8, BLOCK_N=16, BLOCK_K=16, num_warps=4)}

    def _fitting(configs, x, smem, live, kernel=None):
        """The configs whose predicted shared memory smem(config, element bytes) fits x's GPU, whose dot tiles,
        live(config) elements, fit its registers and that do not spill there (_SPILLS[kernel]); possibly none: the
        callers then keep their smallest."""
        profile, e = device_profile(x.device), x.element_size()
        spills = _SPILLS.get(kernel, {}).get(profile.arch, ())
        return [c for c in configs if profile.fits(smem(c, e)) and profile.dots_fit_registers(live(c), c.num_warps)
                and (e, (*c.kwargs.values(), c.num_warps)) not in spills]

    def _live_pkn(c, p="BLOCK_P", n="BLOCK_N"):
        # the DW tile (P x K), the weight tile (K x N) and the accumulator (P x N)
        p, n, k = c.kwargs[p], c.kwargs[n], c.kwargs["BLOCK_K"]
        return p * k + k * n + p * n

    def _staged_taps(ks):
        # the depthwise taps whose x loads the pipeliner stages ahead: all 9 of a 3x3, one row of a larger kernel
        return ks * ks if ks <= 3 else ks

    def _prune_dw_pw(configs, named_args, **kwargs):
        # the DW tile's loads, staged (stages - 1) deep (bf16 128 x 128 x 3 stages: 187 KB on sm_90a; fp32 twice)
        taps = _staged_taps(kwargs.get("KS", named_args.get("KS", 3)))

        def smem(c, e):
            p, n, k, st = c.kwargs["BLOCK_P"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_stages
            return smem_estimate(taps * p * k, e, st - 1, ((st + 1) * n * k + 2048) * e)
        return _fitting(configs, named_args["x_ptr"], smem, _live_pkn, "dw_pw") or configs[-1:]  # the smallest

    def _prune_pw_pw(configs, named_args, **kwargs):
        n1p = kwargs.get("N1P", named_args.get("N1P", 64))
        taps = _staged_taps(kwargs.get("KS", named_args.get("KS", 3)))

        def smem(c, e):  # the staged DW loads; the hidden tile, both weights' tiles
            p, k, n2, st = c.kwargs["BLOCK_P"], c.kwargs["BLOCK_K"], c.kwargs["BLOCK_N2"], c.num_stages
            return smem_estimate(taps * p * k, e, st - 1, (p * n1p + k * n1p + n1p * n2 + 2048) * e)
        def live(c):  # the DW tile, the hidden tile and its weight tile, the output accumulator
            p, k, n2 = c.kwargs["BLOCK_P"], c.kwargs["BLOCK_K"], c.kwargs["BLOCK_N2"]
            return p * k + k * n1p + p * n1p + p * n2
        if named_args["x_ptr"].element_size() == 8:
            return [_FP64_CONFIGS["dw_pw_pw"]]
        mma = device_profile(named_args["x_ptr"].device).mma
        kept = [c for c in configs if c.kwargs["BLOCK_P"] * n1p <= 16384  # register budget of the hidden tile
                and (c.kwargs["BLOCK_K"] >= 32 or not mma)]
        smallest = kept[:1] if mma else kept[-1:]  # the tensor-core list's first; the FMA config, last
        return _fitting(kept, named_args["x_ptr"], smem, live) or smallest

    def _prune_pw_dw(configs, named_args, **kwargs):  # shared memory is small (<= 48 KB): registers only
        return _fitting(configs, named_args["x_ptr"], lambda c, e: 0,
                        lambda c: _live_pkn(c, "BLOCK_Q"), "pw_dw") or configs[-1:]  # the last is the smallest

    def _prune_dw_pw_dw(configs, named_args, **kwargs):
        x = named_args["x_ptr"]
        if x.element_size() == 8:
            return [_FP64_CONFIGS["dw_pw_dw"]]
        # fp32 with mma.sync: 64-channel tiles spill (16 B per thread, sm_86); the 8-warp 32-channel config is
        # fp32's (16-bit tiles get 128 registers at 8 warps from ptxas and spill, sm_80-sm_100)
        if x.element_size() >= 4 and device_profile(x.device).mma_sync:
            configs = [c for c in configs if c.kwargs["BLOCK_N"] < 64] or configs
        if x.element_size() < 4:
            configs = [c for c in configs if not (c.kwargs["BLOCK_N"] == 32 and c.num_warps == 8)]
        return _fitting(configs, x, lambda c, e: 0, lambda c: _live_pkn(c, "BLOCK_E"), "dw_pw_dw") or configs[-1:]


    _dw_pw = autotune(_DW_PW_CONFIGS, ["PIX_BUCKET", "K", "N", "KS"], _prune_dw_pw)(_dw_pw_kernel)
    _dw_pw_pw = autotune(_DW_PW_PW_CONFIGS, ["PIX_BUCKET", "K", "N1", "N2", "KS"], _prune_pw_pw)(_dw_pw_pw_kernel)
    _pw_dw = autotune(_PW_DW_CONFIGS, ["PIX_BUCKET", "K", "N", "KS", "STRIDE"], _prune_pw_dw)(_pw_dw_kernel)
    _dw_pw_dw = autotune(_DW_PW_DW_CONFIGS, ["PIX_BUCKET", "K", "N", "KS1"], _prune_dw_pw_dw)(_dw_pw_dw_kernel)
    _SCRATCH_PER_PROGRAM = max(c.kwargs["BLOCK_E"] * c.kwargs["BLOCK_N"] for c in _DW_PW_DW_CONFIGS)
