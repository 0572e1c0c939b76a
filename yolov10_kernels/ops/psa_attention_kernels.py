"""The Triton kernels of the fused PSA attention (psa_attention.py): the flash-style forward, the backward's
preprocess, dK/dV and dQ kernels and the partial-sum composition, their autotune configs and prunes per GPU
profile, and the backward's tile sizes."""
from ..gpus import device_profile, smem_estimate
from .utils import autotune, config, tl, triton, triton_interpreted

LN2 = 0.6931471805599453
_INTERP_BLOCK = 32  # the interpreter's tiles: few, large programs, and still several blocks at the test shapes


# --------------------------------------------------------------------------------------------------------
# Triton kernels. Memory layout: qkv (B, heads * G, H, W) with G = 2 KD + HD; head h's q channel d is h*G + d,
# k is h*G + KD + d, v is h*G + 2KD + c. out / pe / dout: (B, heads * HD, H, W). Every 4-D tensor is read and
# written through its (batch, channel, token) strides (token n = y * W + x), so NCHW and channels_last tensors
# go in without a copy (utils.dense_4d); the buffers the ops allocate take qkv's (gradients: their input's) layout.
# The token count N (and N_BUCKET, the autotune key's power-of-two stand-in for it) are not specialised on, so a
# new image size neither recompiles nor, within its bucket, re-tunes; the batch is only a grid dimension. NCHW
# inputs pay for it: their token axis is the contiguous one, and a mask against an unspecialised N is not provably
# constant over a vector, so their tiles load element by element and are not software-pipelined. channels_last
# (the accelerated model's layout) vectorises along channels and is unaffected.
# The matmul kernels split a head dim into tl.dot widths (_split_dim): one power of two, or a power of two plus
# a remainder padded to 16 (m-scale kd 36 -> 32 + 16, hd 72 -> 64 + 16: 48 and 80 lanes instead of 64 and 128),
# each part its own tile and dot; padded lanes load as 0 and q's are forced to 0 after its affine. The
# elementwise pre kernel pads to one power of two (HD_P).
#
# The BN affine of k and v never touches the K / V tiles inside the loops, which therefore go from memory
# straight into tl.dot (and Triton's software pipeline), as the raw conv output:
#   S_ij = s (a_q q_i + b_q) . (a_k k_j + b_k) = [s a_k (a_q q_i + b_q)] . k_j + c_i: the k scale folds into
#          q's row (q' below), and c_i = s (a_q q_i + b_q) . b_k is constant along the softmax axis, so the
#          k shift cancels (and its gradient is exactly 0);
#   O_i = sum_j P_ij (a_v v_j + b_v) = a_v (sum_j P_ij v_j) + b_v, as sum_j P_ij = 1: the v affine is
#          applied once, in the epilogue.
# In the backward the same identities give dP'_ij = (a_v dO_i) . v_j = dP_ij - dO_i . b_v with
# delta'_i = delta_i - dO_i . b_v, so dS = P (dP' - delta') is unchanged; d b_v = sum_i dO_i (= d pe_shift);
# d a_k = sum_i (a_q q_i + b_q) * T_i with T_i = s sum_j dS_ij k_j (the dq loop's accumulator).
# This is exact algebra; it also skips one rounding of k and v to the input dtype.
# --------------------------------------------------------------------------------------------------------
if triton is not None:
    _LN2 = tl.constexpr(LN2)  # a jit function may read module globals only when they are constexpr

    @triton.jit
    def _ld(ptr, c0, WIDTH: tl.constexpr, D: tl.constexpr, tok, tmask, sc, sn):
        """[tokens, WIDTH] tile of channels c0 + [0, WIDTH) of a D-channel group at tokens tok (lanes >= D are 0)."""
        c = c0 + tl.arange(0, WIDTH)
        return tl.load(ptr + c[None, :] * sc + tok[:, None] * sn, mask=tmask[:, None] & (c < D)[None, :], other=0)

    @triton.jit
    def _vec(ptr, c0, WIDTH: tl.constexpr, D: tl.constexpr, ACC: tl.constexpr):
        """Per-channel values c0 + [0, WIDTH) of a D-channel group (lanes >= D are 0)."""
        c = c0 + tl.arange(0, WIDTH)
        return tl.load(ptr + c, mask=c < D, other=0).to(ACC)

    @triton.jit
    def _q_prime(qkv, QA, QB, hg, c0, WIDTH: tl.constexpr, KD: tl.constexpr, tok, tmask, sqc, sqn, qk_scale,
                 ACC: tl.constexpr):
        """q' = (a_q q + b_q) * a_k * qk_scale on q channels c0 + [0, WIDTH): [tokens, WIDTH], in the input dtype,
        padded lanes and masked tokens exactly 0."""
        qa = _vec(QA + hg, c0, WIDTH, KD, ACC)
        qb = _vec(QB + hg, c0, WIDTH, KD, ACC)
        ka = _vec(QA + hg + KD, c0, WIDTH, KD, ACC) * qk_scale
        m = tmask[:, None] & (c0 + tl.arange(0, WIDTH) < KD)[None, :]
        q = _ld(qkv, c0, WIDTH, KD, tok, tmask, sqc, sqn).to(ACC)
        return tl.where(m, (q * qa[None, :] + qb[None, :]) * ka[None, :], 0).to(qkv.dtype.element_ty)

    @triton.jit
    def _fwd_out(acc, l_i, c0, WIDTH: tl.constexpr, HD: tl.constexpr, QA, QB, PA, PB, PE, OUT, hv, hc, b, tok,
                 tmask, spb, spc, spn, sob, soc, son, ACC: tl.constexpr):
        """The forward epilogue on output channels c0 + [0, WIDTH) of a head: the v affine, + BN_pe(pe_raw)."""
        va = _vec(QA + hv, c0, WIDTH, HD, ACC)
        vb = _vec(QB + hv, c0, WIDTH, HD, ACC)
        pa = _vec(PA + hc, c0, WIDTH, HD, ACC)
        pb = _vec(PB + hc, c0, WIDTH, HD, ACC)
        c = c0 + tl.arange(0, WIDTH)
        m = tmask[:, None] & (c < HD)[None, :]
        ch = (hc + c)[None, :]
        pe = tl.load(PE + b * spb + ch * spc + tok[:, None] * spn, mask=m, other=0).to(ACC)
        o = acc / l_i[:, None] * va[None, :] + (vb + pb)[None, :] + pe * pa[None, :]
        tl.store(OUT + b * sob + ch * soc + tok[:, None] * son, o.to(OUT.dtype.element_ty), mask=m)

    @triton.jit(do_not_specialize=["N", "N_BUCKET"])
    def _psa_fwd_kernel(QKV, QA, QB, PE, PA, PB, OUT, LSE, N, N_BUCKET, H, qk_scale,
                        sqb, sqc, sqn, spb, spc, spn, sob, soc, son,
                        KD: tl.constexpr, HD: tl.constexpr, KD0: tl.constexpr, KD1: tl.constexpr,
                        HD0: tl.constexpr, HD1: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        ACC: tl.constexpr, DOT_PREC: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = pid_bh % H
        G: tl.constexpr = 2 * KD + HD
        DT = QKV.dtype.element_ty
        qkv = QKV + b * sqb + h * G * sqc
        kv = qkv + KD * sqc
        vv = qkv + 2 * KD * sqc
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        mask_m = offs_m < N
        # q' = (a_q q + b_q) * a_k * scale * log2(e), in head-dim parts [BLOCK_M, KD0] (+ [BLOCK_M, KD1])
        q0 = _q_prime(qkv, QA, QB, h * G, 0, KD0, KD, offs_m, mask_m, sqc, sqn, qk_scale, ACC)
        if KD1 > 0:
            q1 = _q_prime(qkv, QA, QB, h * G, KD0, KD1, KD, offs_m, mask_m, sqc, sqn, qk_scale, ACC)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
        l_i = tl.zeros([BLOCK_M], dtype=ACC)
        acc0 = tl.zeros([BLOCK_M, HD0], dtype=ACC)
        if HD1 > 0:
            acc1 = tl.zeros([BLOCK_M, HD1], dtype=ACC)
        for start_n in range(0, N, BLOCK_N):
            cols = start_n + offs_n
            mask_n = cols < N
            k0 = _ld(kv, 0, KD0, KD, cols, mask_n, sqc, sqn)  # raw [BLOCK_N, KD0]
            s = tl.dot(q0, tl.trans(k0), input_precision=DOT_PREC).to(ACC)
            if KD1 > 0:
                k1 = _ld(kv, KD0, KD1, KD, cols, mask_n, sqc, sqn)
                s += tl.dot(q1, tl.trans(k1), input_precision=DOT_PREC).to(ACC)
            s = tl.where(mask_n[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            p = p.to(DT)
            v0 = _ld(vv, 0, HD0, HD, cols, mask_n, sqc, sqn)  # raw [BLOCK_N, HD0]
            acc0 = acc0 * alpha[:, None] + tl.dot(p, v0, input_precision=DOT_PREC).to(ACC)
            if HD1 > 0:
                v1 = _ld(vv, HD0, HD1, HD, cols, mask_n, sqc, sqn)
                acc1 = acc1 * alpha[:, None] + tl.dot(p, v1, input_precision=DOT_PREC).to(ACC)
            m_i = m_new
        hv = h * G + 2 * KD
        _fwd_out(acc0, l_i, 0, HD0, HD, QA, QB, PA, PB, PE, OUT, hv, h * HD, b, offs_m, mask_m,
                 spb, spc, spn, sob, soc, son, ACC)
        if HD1 > 0:
            _fwd_out(acc1, l_i, HD0, HD1, HD, QA, QB, PA, PB, PE, OUT, hv, h * HD, b, offs_m, mask_m,
                     spb, spc, spn, sob, soc, son, ACC)
        tl.store(LSE + pid_bh.to(tl.int64) * N + offs_m, m_i + tl.log2(l_i), mask=mask_m)

    @triton.jit(do_not_specialize=["N"])
    def _psa_bwd_pre_kernel(OUT, DOUT, PE, PA, PB, QB, DELTA, DPE, PPA, PPB, N, H,
                            sob, soc, son, sdb, sdc, sdn, spb, spc, spn, KD: tl.constexpr,
                            HD: tl.constexpr, HD_P: tl.constexpr, BLOCK_M: tl.constexpr, ACC: tl.constexpr):
        """delta' = rowsum(dout * (O - b_v)) with O = out - BN_pe(pe); d pe_raw = dout * pe_scale (dpe has pe's
        strides); per-block partial sums of the pe scale / shift gradients (the shift's is also the v shift's)."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = pid_bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_hd = tl.arange(0, HD_P)
        mask_m = offs_m < N
        mhd = offs_hd < HD
        omask = mask_m[:, None] & mhd[None, :]
        ch = (h * HD + offs_hd)[None, :]
        tok = offs_m[:, None]
        pe_off = b * spb + ch * spc + tok * spn
        pa = tl.load(PA + h * HD + offs_hd, mask=mhd, other=0).to(ACC)
        pb = tl.load(PB + h * HD + offs_hd, mask=mhd, other=0).to(ACC)
        vb = tl.load(QB + h * (2 * KD + HD) + 2 * KD + offs_hd, mask=mhd, other=0).to(ACC)
        out = tl.load(OUT + b * sob + ch * soc + tok * son, mask=omask, other=0).to(ACC)
        do = tl.load(DOUT + b * sdb + ch * sdc + tok * sdn, mask=omask, other=0).to(ACC)
        pe = tl.load(PE + pe_off, mask=omask, other=0).to(ACC)
        o = tl.where(omask, out - pe * pa[None, :] - (pb + vb)[None, :], 0)
        tl.store(DELTA + pid_bh.to(tl.int64) * N + offs_m, tl.sum(do * o, 1), mask=mask_m)
        tl.store(DPE + pe_off, (do * pa[None, :]).to(DPE.dtype.element_ty), mask=omask)
        prow = (b * tl.num_programs(0) + pid_m) * (H * HD) + h * HD + offs_hd
        tl.store(PPA + prow, tl.sum(do * pe, 0), mask=mhd)
        tl.store(PPB + prow, tl.sum(do, 0), mask=mhd)

    @triton.jit
    def _dk_out(dk, c0, WIDTH: tl.constexpr, KD: tl.constexpr, dqkv, tok, tmask, sqc, sqn):
        """d raw k on k channels c0 + [0, WIDTH): q' carries a_k * scale * log2(e), the gradient wants a_k * scale."""
        c = c0 + tl.arange(0, WIDTH)
        off = tok[:, None] * sqn + ((KD + c) * sqc)[None, :]
        tl.store(dqkv + off, (dk * _LN2).to(dqkv.dtype.element_ty), mask=tmask[:, None] & (c < KD)[None, :])

    @triton.jit
    def _dv_out(dv, c0, WIDTH: tl.constexpr, KD: tl.constexpr, HD: tl.constexpr, qkv, dqkv, QA, PA_, hg, prow, tok,
                tmask, sqc, sqn, ACC: tl.constexpr):
        """d raw v = a_v dV on v channels c0 + [0, WIDTH), and this key block's partial sums of d a_v = sum_j dV_j v_j
        (the raw v tile is read again rather than kept live through the loop)."""
        c = c0 + tl.arange(0, WIDTH)
        m = tmask[:, None] & (c < HD)[None, :]
        off = tok[:, None] * sqn + ((2 * KD + c) * sqc)[None, :]
        va = _vec(QA + hg + 2 * KD, c0, WIDTH, HD, ACC)
        tl.store(dqkv + off, (dv * va[None, :]).to(dqkv.dtype.element_ty), mask=m)
        v_raw = tl.load(qkv + off, mask=m, other=0).to(ACC)
        tl.store(PA_ + prow + 2 * KD + c, tl.sum(tl.where(m, dv, 0) * v_raw, 0), mask=c < HD)

    @triton.jit(do_not_specialize=["N", "N_BUCKET"])
    def _psa_bwd_dkdv_kernel(QKV, QA, QB, DOUT, LSE, DELTA, DQKV, PA_, N, N_BUCKET, H, qk_scale,
                             sqb, sqc, sqn, sdb, sdc, sdn,
                             KD: tl.constexpr, HD: tl.constexpr, KD0: tl.constexpr, KD1: tl.constexpr,
                             HD0: tl.constexpr, HD1: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             ACC: tl.constexpr, DOT_PREC: tl.constexpr):
        """One key block of one (batch, head): dK, dV over all query blocks, then the raw-qkv gradients of
        the k and v channels (dqkv has qkv's strides) and the partial sums of the v scale gradient."""
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = pid_bh % H
        G: tl.constexpr = 2 * KD + HD
        DT = QKV.dtype.element_ty
        base = b * sqb + h * G * sqc
        qkv = QKV + base
        dout = DOUT + b * sdb + h * HD * sdc
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        mask_n = offs_n < N
        hv = h * G + 2 * KD
        k0 = _ld(qkv + KD * sqc, 0, KD0, KD, offs_n, mask_n, sqc, sqn)  # raw [BLOCK_N, KD0]
        v0 = (_ld(qkv + 2 * KD * sqc, 0, HD0, HD, offs_n, mask_n, sqc, sqn).to(ACC)
              * _vec(QA + hv, 0, HD0, HD, ACC)[None, :]).to(DT)  # a_v v: [BLOCK_N, HD0]
        dk0 = tl.zeros([BLOCK_N, KD0], dtype=ACC)
        dv0 = tl.zeros([BLOCK_N, HD0], dtype=ACC)
        if KD1 > 0:
            k1 = _ld(qkv + KD * sqc, KD0, KD1, KD, offs_n, mask_n, sqc, sqn)
            dk1 = tl.zeros([BLOCK_N, KD1], dtype=ACC)
        if HD1 > 0:
            v1 = (_ld(qkv + 2 * KD * sqc, HD0, HD1, HD, offs_n, mask_n, sqc, sqn).to(ACC)
                  * _vec(QA + hv, HD0, HD1, HD, ACC)[None, :]).to(DT)
            dv1 = tl.zeros([BLOCK_N, HD1], dtype=ACC)
        for start_m in range(0, N, BLOCK_M):
            rows = start_m + offs_m
            mask_m = rows < N
            q0 = _q_prime(qkv, QA, QB, h * G, 0, KD0, KD, rows, mask_m, sqc, sqn, qk_scale, ACC)  # [BLOCK_M, KD0]
            do0 = _ld(dout, 0, HD0, HD, rows, mask_m, sdc, sdn)  # [BLOCK_M, HD0]
            lse = tl.load(LSE + pid_bh.to(tl.int64) * N + rows, mask=mask_m, other=0).to(ACC)
            delta = tl.load(DELTA + pid_bh.to(tl.int64) * N + rows, mask=mask_m, other=0).to(ACC)
            st = tl.dot(k0, tl.trans(q0), input_precision=DOT_PREC).to(ACC)  # [BLOCK_N, BLOCK_M]
            if KD1 > 0:
                q1 = _q_prime(qkv, QA, QB, h * G, KD0, KD1, KD, rows, mask_m, sqc, sqn, qk_scale, ACC)
                st += tl.dot(k1, tl.trans(q1), input_precision=DOT_PREC).to(ACC)
            pt = tl.exp2(st - lse[None, :])
            pt = tl.where(mask_n[:, None] & mask_m[None, :], pt, 0)
            dpt = tl.dot(v0, tl.trans(do0), input_precision=DOT_PREC).to(ACC)
            dv0 += tl.dot(pt.to(DT), do0, input_precision=DOT_PREC).to(ACC)
            if HD1 > 0:
                do1 = _ld(dout, HD0, HD1, HD, rows, mask_m, sdc, sdn)
                dpt += tl.dot(v1, tl.trans(do1), input_precision=DOT_PREC).to(ACC)
                dv1 += tl.dot(pt.to(DT), do1, input_precision=DOT_PREC).to(ACC)
            dst = (pt * (dpt - delta[None, :])).to(DT)
            dk0 += tl.dot(dst, q0, input_precision=DOT_PREC).to(ACC)
            if KD1 > 0:
                dk1 += tl.dot(dst, q1, input_precision=DOT_PREC).to(ACC)

        dqkv = DQKV + base
        _dk_out(dk0, 0, KD0, KD, dqkv, offs_n, mask_n, sqc, sqn)
        if KD1 > 0:
            _dk_out(dk1, KD0, KD1, KD, dqkv, offs_n, mask_n, sqc, sqn)
        prow = (b * tl.num_programs(0) + pid_n) * (H * G) + h * G
        _dv_out(dv0, 0, HD0, KD, HD, qkv, dqkv, QA, PA_, h * G, prow, offs_n, mask_n, sqc, sqn, ACC)
        if HD1 > 0:
            _dv_out(dv1, HD0, HD1, KD, HD, qkv, dqkv, QA, PA_, h * G, prow, offs_n, mask_n, sqc, sqn, ACC)

    @triton.jit
    def _dq_out(t, c0, WIDTH: tl.constexpr, KD: tl.constexpr, qkv, dqkv, QA, QB, PA_, PB_, hg, prow, tok, tmask,
                sqc, sqn, sm_scale, ACC: tl.constexpr):
        """From T = sum_j dS_ij k_j (raw k) on q channels c0 + [0, WIDTH): d raw q = a_q a_k T * scale and this
        query block's partial sums of d a_q = sum dQn * q, d b_q = sum dQn and d a_k = sum (a_q q + b_q) * T."""
        c = c0 + tl.arange(0, WIDTH)
        cm = c < KD
        m = tmask[:, None] & cm[None, :]
        qa = _vec(QA + hg, c0, WIDTH, KD, ACC)
        qb = _vec(QB + hg, c0, WIDTH, KD, ACC)
        ka = _vec(QA + hg + KD, c0, WIDTH, KD, ACC)
        t = tl.where(m, t * sm_scale, 0)
        dqn = t * ka[None, :]
        off = tok[:, None] * sqn + (c * sqc)[None, :]
        tl.store(dqkv + off, (dqn * qa[None, :]).to(dqkv.dtype.element_ty), mask=m)
        q_raw = tl.load(qkv + off, mask=m, other=0).to(ACC)
        tl.store(PA_ + prow + c, tl.sum(dqn * q_raw, 0), mask=cm)
        tl.store(PB_ + prow + c, tl.sum(dqn, 0), mask=cm)
        tl.store(PA_ + prow + KD + c, tl.sum(t * (q_raw * qa[None, :] + qb[None, :]), 0), mask=cm)

    @triton.jit(do_not_specialize=["N", "N_BUCKET"])
    def _psa_bwd_dq_kernel(QKV, QA, QB, DOUT, LSE, DELTA, DQKV, PA_, PB_, N, N_BUCKET, H, qk_scale, sm_scale,
                           sqb, sqc, sqn, sdb, sdc, sdn,
                           KD: tl.constexpr, HD: tl.constexpr, KD0: tl.constexpr, KD1: tl.constexpr,
                           HD0: tl.constexpr, HD1: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           ACC: tl.constexpr, DOT_PREC: tl.constexpr):
        """One query block of one (batch, head): dQ over all key blocks, then the raw-qkv gradient of the q
        channels and the partial sums of the q scale / shift and k scale gradients."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = pid_bh % H
        G: tl.constexpr = 2 * KD + HD
        DT = QKV.dtype.element_ty
        base = b * sqb + h * G * sqc
        qkv = QKV + base
        kv = qkv + KD * sqc
        vv = qkv + 2 * KD * sqc
        dout = DOUT + b * sdb + h * HD * sdc
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        mask_m = offs_m < N
        hv = h * G + 2 * KD
        q0 = _q_prime(qkv, QA, QB, h * G, 0, KD0, KD, offs_m, mask_m, sqc, sqn, qk_scale, ACC)  # q'
        do0 = (_ld(dout, 0, HD0, HD, offs_m, mask_m, sdc, sdn).to(ACC)
               * _vec(QA + hv, 0, HD0, HD, ACC)[None, :]).to(DT)  # a_v dO: [BLOCK_M, HD0]
        t0 = tl.zeros([BLOCK_M, KD0], dtype=ACC)
        if KD1 > 0:
            q1 = _q_prime(qkv, QA, QB, h * G, KD0, KD1, KD, offs_m, mask_m, sqc, sqn, qk_scale, ACC)
            t1 = tl.zeros([BLOCK_M, KD1], dtype=ACC)
        if HD1 > 0:
            do1 = (_ld(dout, HD0, HD1, HD, offs_m, mask_m, sdc, sdn).to(ACC)
                   * _vec(QA + hv, HD0, HD1, HD, ACC)[None, :]).to(DT)
        lse = tl.load(LSE + pid_bh.to(tl.int64) * N + offs_m, mask=mask_m, other=0).to(ACC)
        delta = tl.load(DELTA + pid_bh.to(tl.int64) * N + offs_m, mask=mask_m, other=0).to(ACC)

        for start_n in range(0, N, BLOCK_N):
            cols = start_n + offs_n
            mask_n = cols < N
            k0 = _ld(kv, 0, KD0, KD, cols, mask_n, sqc, sqn)  # raw [BLOCK_N, KD0]
            s = tl.dot(q0, tl.trans(k0), input_precision=DOT_PREC).to(ACC)
            if KD1 > 0:
                k1 = _ld(kv, KD0, KD1, KD, cols, mask_n, sqc, sqn)
                s += tl.dot(q1, tl.trans(k1), input_precision=DOT_PREC).to(ACC)
            p = tl.exp2(s - lse[:, None])
            p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0)
            dp = tl.dot(do0, tl.trans(_ld(vv, 0, HD0, HD, cols, mask_n, sqc, sqn)), input_precision=DOT_PREC)
            if HD1 > 0:
                dp += tl.dot(do1, tl.trans(_ld(vv, HD0, HD1, HD, cols, mask_n, sqc, sqn)), input_precision=DOT_PREC)
            ds = (p * (dp.to(ACC) - delta[:, None])).to(DT)
            t0 += tl.dot(ds, k0, input_precision=DOT_PREC).to(ACC)
            if KD1 > 0:
                t1 += tl.dot(ds, k1, input_precision=DOT_PREC).to(ACC)

        prow = (b * tl.num_programs(0) + pid_m) * (H * G) + h * G
        _dq_out(t0, 0, KD0, KD, qkv, DQKV + base, QA, QB, PA_, PB_, h * G, prow, offs_m, mask_m, sqc, sqn, sm_scale,
                ACC)
        if KD1 > 0:
            _dq_out(t1, KD0, KD1, KD, qkv, DQKV + base, QA, QB, PA_, PB_, h * G, prow, offs_m, mask_m, sqc, sqn,
                    sm_scale, ACC)

    def _head_width(kwargs):
        """Channels of one head's q/k plus v tiles as the kernels hold them (each split in two power-of-two parts)."""
        return kwargs["KD0"] + kwargs["KD1"] + kwargs["HD0"] + kwargs["HD1"]

    def _prune_fwd(configs, named_args, **kwargs):
        # each stage holds a BLOCK_N-row K and V tile; the Q tile stays (bf16 64 x 64, 3 stages: 54 KB, sm_90a)
        qkv, kd = named_args["QKV"], kwargs["KD0"] + kwargs["KD1"]
        profile, e, width = device_profile(qkv.device), qkv.element_size(), _head_width(kwargs)
        # tensor-core GPUs keep the configs sized for them, FMA ones the small configs sized for registers; with
        # mma.sync 8 warps on 64-key tiles spill (36 B per thread, sm_86)
        sized = [c for c in configs if (c.kwargs["BLOCK_M"] > _FMA_ROWS) == profile.mma
                 and not (profile.mma_sync and c.num_warps == 8 and c.kwargs["BLOCK_N"] == 64)]
        kept = [c for c in sized if profile.fits(smem_estimate(
            c.kwargs["BLOCK_N"] * width, e, c.num_stages, c.kwargs["BLOCK_M"] * kd * e))]
        return kept or sized[:1]  # the first is the smallest

    def _prune_bwd(configs, named_args, **kwargs):
        qkv = named_args["QKV"]
        profile, e, width = device_profile(qkv.device), qkv.element_size(), _head_width(kwargs)
        # fp32 dkdv tiles spill with 4 warps at the m-scale head dims (124-172 B per thread, sm_90a), as do all
        # tiles with FMA dots (T4: 0.7-1.5 KB per thread)
        warps = [c for c in configs if (e < 4 and profile.mma) or c.num_warps == 8]
        # each stage holds an inner tile of the other side's rows; the program's own rows stay
        rows, inner = _bwd_tiles(qkv)
        kept = [c for c in warps if profile.fits(smem_estimate(inner * width, e, max(c.num_stages, 1),
                                                               rows * width * e))]
        return kept or warps[:1]

    # A small set (the static report compiles every config for every GPU profile): on sm_90a at the yolov10n/s/m
    # shapes none spills in bf16 or fp16, in NCHW or channels_last; configs whose predicted shared memory does not
    # fit the GPU at hand (gpus.device_profile) are pruned before launch.
    # The last ones are for GPUs whose Triton dots run on FMA units (a T4: q, k, v, the logits and the output
    # accumulator all in registers spill at 64 query rows); tensor-core GPUs never time them (_prune_fwd).
    _FWD_CONFIGS = [config(w, s, BLOCK_M=bm, BLOCK_N=bn)
                    for bm, bn, w, s in ((64, 32, 4, 2), (64, 64, 4, 3), (64, 64, 8, 2), (128, 32, 8, 3),
                                         (128, 64, 8, 2), (32, 32, 4, 2), (16, 16, 4, 2))]
    _FMA_ROWS = 32  # query rows of the FMA-only configs, and at most those of the FMA backward tiles
    # The backward kernels' tile sizes are fixed by the launcher (the partial-sum buffers have one row per
    # block), so only warps and pipelining are tuned.
    _BWD_CONFIGS = [config(w, s) for w, s in ((4, 1), (4, 2), (8, 2), (8, 3))]
    _KEY = ["N_BUCKET", "KD", "HD"]
    _psa_fwd = autotune(_FWD_CONFIGS, _KEY, _prune_fwd)(_psa_fwd_kernel)
    _psa_bwd_dkdv = autotune(_BWD_CONFIGS, _KEY, _prune_bwd)(_psa_bwd_dkdv_kernel)
    _psa_bwd_dq = autotune(_BWD_CONFIGS, _KEY, _prune_bwd)(_psa_bwd_dq_kernel)

# tile sizes: the interpreter runs programs one after another, so fewer, larger blocks are faster there,
# but 32 still gives several blocks (and the masked tail) at the test shapes
_BWD_BLOCK_GPU = 64  # rows per program of the dq and dkdv kernels (and rows of the partial-sum buffers)
_BWD_INNER_GPU = 32  # the tile they loop over


def _bwd_tiles(qkv):
    """(rows per program, inner tile) of the backward kernels: the interpreter's 32 x 32 (few, large programs),
    and on a GPU whose dots run on FMA units (gpus.GPUProfile.mma False: a T4) too, whose registers hold every
    tile (64 rows spill there); 32 x 16 with mma.sync (its operand fragments live in registers: yolov10m's dK / dV
    tiles at 64 x 32 spill 24-164 bytes per thread on sm_80-sm_120, in every dtype); _BWD_BLOCK_GPU x
    _BWD_INNER_GPU with wgmma / tcgen05 (sm_90, sm_100). fp64 on a GPU (gradcheck, the exact references): 16 x 16,
    the smallest dot tile (yolov10m's fp64 64 x 32 dkdv tiles take 127 KB, over a 99 KB GPU's limit, and 32 x 32
    ones 70 KB, over a T4's 64 KB)."""
    if triton_interpreted():
        return _INTERP_BLOCK, _INTERP_BLOCK
    if qkv.element_size() == 8:
        return 16, 16
    profile = device_profile(qkv.device)
    if not profile.mma:
        return _INTERP_BLOCK, _INTERP_BLOCK
    if profile.mma_sync:
        return 32, 16
    return _BWD_BLOCK_GPU, _BWD_INNER_GPU
if triton is not None:
    @triton.jit(do_not_specialize=["P"])
    def _psa_sums_kernel(pqa, pqb, ppa, ppb, dqa, dqb, dpa, dpb, P, CQ, C, KD: tl.constexpr, HD: tl.constexpr,
                         ACC: tl.constexpr, BLOCK: tl.constexpr):
        """The backward's per-block partial sums reduced to the scale / shift gradients, in their dtypes: qkv
        scale (every channel), qkv shift (q: its own sums; k: exactly 0, a k shift adds a per-query constant to
        the logits that the softmax cancels; v: the pe shift's, since sum_j P_ij = 1), pe scale and shift."""
        G: tl.constexpr = 2 * KD + HD
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mq = i < CQ
        j = i % G
        is_q = mq & (j < KD)
        is_v = mq & (j >= 2 * KD)
        vch = (i // G) * HD + j - 2 * KD  # the pe channel of a v channel
        mp = i < C
        sqa = tl.zeros([BLOCK], ACC)
        sqb = tl.zeros([BLOCK], ACC)
        spa = tl.zeros([BLOCK], ACC)
        spb = tl.zeros([BLOCK], ACC)
        for p in range(P):
            sqa += tl.load(pqa + p * CQ + i, mask=mq, other=0.0).to(ACC)
            sqb += tl.load(pqb + p * CQ + i, mask=is_q, other=0.0).to(ACC)
            sqb += tl.load(ppb + p * C + vch, mask=is_v, other=0.0).to(ACC)
            spa += tl.load(ppa + p * C + i, mask=mp, other=0.0).to(ACC)
            spb += tl.load(ppb + p * C + i, mask=mp, other=0.0).to(ACC)
        tl.store(dqa + i, sqa.to(dqa.dtype.element_ty), mask=mq)
        tl.store(dqb + i, sqb.to(dqb.dtype.element_ty), mask=mq)
        tl.store(dpa + i, spa.to(dpa.dtype.element_ty), mask=mp)
        tl.store(dpb + i, spb.to(dpb.dtype.element_ty), mask=mp)
