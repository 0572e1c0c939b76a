"""Fused PSA attention (YOLOv10 `Attention`) in Triton: flash-style forward and backward.

The reference (yolov10/modules.py `Attention`, before `proj`):

    qkv = BN_qkv(conv1x1(x))                       # (B, heads * (2 kd + hd), H, W)
    q, k, v = per head [q (kd) | k (kd) | v (hd)]  # channels of one head are contiguous
    attn = softmax(q^T k * kd^-0.5)                # (N, N) per head, N = H * W
    y = v attn^T + BN_pe(dwconv3x3(v))             # (B, heads * hd, H, W)

What the kernels fuse (one read of the raw conv output, no N x N matrix in memory):
  * the BN affine of q, k and v on the RAW qkv conv output (each channel its own scale a = gamma * rstd and
    shift b = beta - mean * a, from batch statistics in training or the running statistics in eval). q's
    affine is applied on load, together with the k scale, the softmax scale and log2 e (for exp2); the k
    shift cancels in the softmax and the v affine moves to the epilogue (exact algebra, see the kernel
    comment), so K and V tiles go from memory straight into tl.dot;
  * q^T k, an online softmax (running max and sum, base 2), P V, and the normalisation;
  * the epilogue: v's affine and `+ BN_pe(pe_raw)` (the BN affine of the depthwise conv's raw output, and
    the add).
  The backward (FlashAttention-2 style: a preprocess kernel for delta = rowsum(dO * O), a dK/dV kernel over
  key blocks, a dQ kernel over query blocks) recomputes P blockwise from the saved log-sum-exp and writes
  the gradient of the raw qkv tensor and, as per-block partial sums reduced by one small kernel, the gradients
  of the per-channel scales and shifts (of qkv's BN and of pe's).

What stays outside, and why:
  * the per-channel batch statistics, the BN affine and the running-statistics update (ops/batchnorm.py's
    bn_batch_affine, one op each way): a reduction over (B, H, W) that must finish before any tile can be
    normalised, so it cannot live in the attention kernel. Because the kernel takes the scale and shift as
    inputs and returns their gradients, the statistics' backward supplies exactly the mean/var terms of the BN
    backward.
  * the depthwise 3x3 conv of pe runs on the normalised v (psa_v_norm, one elementwise op) through cuDNN (its
    input is BN_qkv(v), whose statistics are global, and its own BN needs the statistics of its output before
    the add), so it is a
    separate (cheap: B x C x N x 9 MACs) conv; only its BN affine and the add are fused.
  * `proj` and the PSA FFN stay cuBLAS/cuDNN 1x1 convs: they mix all heads' channels (a kernel that fused
    proj would need every head of a token block in one program and lose the per-(batch, head) grid), they
    are GEMMs that cuBLAS runs near peak, and their training-mode BN needs the statistics of the whole
    output before normalising, i.e. another pass anyway.

Entry points:
  * `psa_attention(qkv_raw, qkv_bn, pe_weight, pe_bn, num_heads, key_dim, head_dim, training, pe_bias=None)`:
    the functional form of Attention.forward before proj (BN statistics, running-stat updates, pe conv, the
    fused op). Differentiable.
  * `torch.ops.yolov10_kernels.psa_attn_fwd / psa_attn_bwd`: the registered ops on raw tensors;
    `psa_v_norm / psa_v_norm_backward`: BN_qkv(v), the pe conv's input.
  * `psa_attention_sdpa(...)`: the same computation in plain PyTorch with F.scaled_dot_product_attention
    (kd != hd); the torch.compile baseline of the benchmark.
  * `psa_attention_reference(...)`: the eager reference (matmul + softmax), same signature.

Registration: torch.library.custom_op (opaque to torch.compile) rather than triton_op, because under
TRITON_INTERPRET=1 (the CPU test path) wrap_triton hands back the raw interpreted kernel and any trace of a
triton_op body (fake tensors, functionalisation) would launch it on fake tensors; with custom_op the op
compiles with fullgraph=True on the CPU and on the GPU alike, and the kernels are large enough that
Inductor seeing inside them would buy nothing.
"""

import torch
import torch.nn.functional as F

from ..gpus import device_profile, smem_estimate
from .batchnorm import batch_norm, scale_shift
from .utils import (acc_dtype, check_device, dot_precision, empty, empty_4d, next_pow2, on_device, op_name,
                    poison, sum_partials, tl, tl_acc, triton, triton_interpreted)

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

# --------------------------------------------------------------------------------------------------------
# Triton kernels. Memory layout: qkv (B, heads * G, H, W) with G = 2 KD + HD; head h's q channel d is h*G + d,
# k is h*G + KD + d, v is h*G + 2KD + c. out / pe / dout: (B, heads * HD, H, W). Every 4-D tensor is read and
# written through its (batch, channel, token) strides (token n = y * W + x), so NCHW and channels_last tensors
# go in without a copy (`_dense`); the buffers the ops allocate take qkv's (gradients: their input's) layout.
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

    def _gpu_autotune(configs, key, prune=None):
        """Multi-config autotune only on a real GPU (the interpreter cannot autotune two or more configs)."""
        def wrap(kernel):
            if triton_interpreted():
                return kernel
            return triton.autotune(configs=configs, key=key,
                                   prune_configs_by=prune and {"early_config_prune": prune})(kernel)
        return wrap

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
    _FWD_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                    for bm, bn, w, s in ((64, 32, 4, 2), (64, 64, 4, 3), (64, 64, 8, 2), (128, 32, 8, 3),
                                         (128, 64, 8, 2), (32, 32, 4, 2), (16, 16, 4, 2))]
    _FMA_ROWS = 32  # query rows of the FMA-only configs, and at most those of the FMA backward tiles
    # The backward kernels' tile sizes are fixed by the launcher (the partial-sum buffers have one row per
    # block), so only warps and pipelining are tuned.
    _BWD_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w, s in ((4, 1), (4, 2), (8, 2), (8, 3))]
    _KEY = ["N_BUCKET", "KD", "HD"]
    _psa_fwd = _gpu_autotune(_FWD_CONFIGS, _KEY, _prune_fwd)(_psa_fwd_kernel)
    _psa_bwd_dkdv = _gpu_autotune(_BWD_CONFIGS, _KEY, _prune_bwd)(_psa_bwd_dkdv_kernel)
    _psa_bwd_dq = _gpu_autotune(_BWD_CONFIGS, _KEY, _prune_bwd)(_psa_bwd_dq_kernel)

# tile sizes: the interpreter runs programs one after another, so fewer, larger blocks are faster there,
# but 32 still gives several blocks (and the masked tail) at the test shapes
_BWD_BLOCK_GPU = 64  # rows per program of the dq and dkdv kernels (and rows of the partial-sum buffers)
_BWD_INNER_GPU = 32  # the tile they loop over


def _bwd_tiles(qkv):
    """(rows per program, inner tile) of the backward kernels: the interpreter's 32 x 32 (few, large programs),
    and on a GPU whose dots run on FMA units (gpus.GPUProfile.mma False: a T4) too, whose registers hold every
    tile (64 rows spill there); _BWD_BLOCK_GPU x _BWD_INNER_GPU on tensor-core GPUs. fp64 on a GPU (gradcheck, the
    exact references): 16 x 16, the smallest dot tile (yolov10m's fp64 64 x 32 dkdv tiles take 127 KB, over a
    99 KB GPU's limit, and 32 x 32 ones 70 KB, over a T4's 64 KB)."""
    if triton_interpreted():
        return _INTERP_BLOCK, _INTERP_BLOCK
    if qkv.element_size() == 8:
        return 16, 16
    if not device_profile(qkv.device).mma:
        return _INTERP_BLOCK, _INTERP_BLOCK
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

    @triton.jit(do_not_specialize=["N", "NBLK"])
    def _v_norm_kernel(qkv, qa, qb, out, gout, dqkv, pga, pgb, N, NBLK, CQ, sqb, sqc, sqn, sob, soc, son,
                       KD: tl.constexpr, HD: tl.constexpr, BACKWARD: tl.constexpr, ACC: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        """Forward: out = v * qa + qb on the v channels of qkv (BN_qkv's v, the pe conv's input). Backward (over
        every qkv channel): dqkv = gout * qa on v channels and 0 on q / k, and per-block partial sums of gout * v
        and gout (the v part of the qkv scale / shift gradients, 0 elsewhere). Grid: (channel blocks of qkv,
        batch x token blocks)."""
        G: tl.constexpr = 2 * KD + HD
        b = (tl.program_id(1) // NBLK).to(tl.int64)
        tok = (tl.program_id(1) % NBLK) * BLOCK_N + tl.arange(0, BLOCK_N)
        tmask = tok < N
        c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < CQ
        j = c % G
        is_v = cmask & (j >= 2 * KD)
        oc = (c // G) * HD + j - 2 * KD  # a v channel's index in out / gout
        a = tl.load(qa + c, mask=is_v, other=0.0).to(ACC)
        qoff = b * sqb + c[None, :].to(tl.int64) * sqc + tok[:, None].to(tl.int64) * sqn
        ooff = b * sob + oc[None, :].to(tl.int64) * soc + tok[:, None].to(tl.int64) * son
        m = tmask[:, None] & is_v[None, :]
        v = tl.load(qkv + qoff, mask=m, other=0.0).to(ACC)
        if BACKWARD:
            g = tl.load(gout + ooff, mask=m, other=0.0).to(ACC)
            tl.store(dqkv + qoff, (g * a[None, :]).to(dqkv.dtype.element_ty), mask=tmask[:, None] & cmask[None, :])
            row = tl.program_id(1).to(tl.int64) * CQ
            tl.store(pga + row + c, tl.sum(g * v, 0), mask=cmask)
            tl.store(pgb + row + c, tl.sum(g, 0), mask=cmask)
        else:
            sh = tl.load(qb + c, mask=is_v, other=0.0).to(ACC)
            tl.store(out + ooff, (v * a[None, :] + sh[None, :]).to(out.dtype.element_ty), mask=m)


_INTERP_BLOCK = 32


def _kernel_meta(qkv):
    return {"ACC": tl_acc(qkv.dtype), "DOT_PREC": dot_precision(qkv)}


def _dense(t):
    """t itself when NCHW- or channels_last-contiguous (the kernels read both through strides), else an NCHW copy."""
    return t if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last) else t.contiguous()


def _strides(t):
    """(batch, channel, token) strides of a dense (B, C, H, W) tensor: token n = y * W + x."""
    return t.stride(0), t.stride(1), t.stride(3)


def _like(t, channels):
    """A (poisoned) (B, channels, H, W) buffer in t's memory format."""
    return empty_4d((t.shape[0], channels, *t.shape[2:]), t)


def _split_dim(d):
    """A head dim as tl.dot widths (d0, d1): a power of two plus a remainder padded to 16 (36 -> 32 + 16,
    72 -> 64 + 16), where that is narrower than one power of two (64, 128); else (next power of two, 0)."""
    whole = next_pow2(d, 16)
    d0 = whole // 2
    d1 = next_pow2(d - d0, 16) if d > d0 else 0
    return (d0, d1) if d1 and d0 + d1 < whole else (whole, 0)


def _head_dims(key_dim, head_dim):
    (kd0, kd1), (hd0, hd1) = _split_dim(key_dim), _split_dim(head_dim)
    return dict(KD=key_dim, HD=head_dim, KD0=kd0, KD1=kd1, HD0=hd0, HD1=hd1)


def _n_bucket(n):
    """The autotune key's stand-in for the token count: the next power of two."""
    return next_pow2(n)


def _check(qkv, qa, qb, pe, pa, pb, num_heads, key_dim, head_dim):
    if qkv.dim() != 4 or pe.dim() != 4:
        raise ValueError(f"qkv and pe must be (B, C, H, W), got {tuple(qkv.shape)} and {tuple(pe.shape)}")
    B, CQ, Hh, Ww = qkv.shape
    G = 2 * key_dim + head_dim
    if CQ != num_heads * G:
        raise ValueError(f"qkv has {CQ} channels, expected num_heads * (2 key_dim + head_dim) = {num_heads * G}")
    if tuple(pe.shape) != (B, num_heads * head_dim, Hh, Ww):
        raise ValueError(f"pe must be {(B, num_heads * head_dim, Hh, Ww)}, got {tuple(pe.shape)}")
    if qa.numel() != CQ or qb.numel() != CQ or pa.numel() != pe.shape[1] or pb.numel() != pe.shape[1]:
        raise ValueError("one scale / shift vector per channel of qkv and of pe is needed")
    if pe.dtype != qkv.dtype:
        raise ValueError(f"qkv and pe must have one dtype, got {qkv.dtype} and {pe.dtype}")
    check_device(qkv)


# --------------------------------------------------------------------------------------------------------
# Registered ops
# --------------------------------------------------------------------------------------------------------
@torch.library.custom_op(op_name("psa_attn_fwd"), mutates_args=())
def psa_attn_fwd(qkv: torch.Tensor, qkv_scale: torch.Tensor, qkv_shift: torch.Tensor, pe: torch.Tensor,
                 pe_scale: torch.Tensor, pe_shift: torch.Tensor, num_heads: int, key_dim: int,
                 head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """out = softmax((a_q q + b_q)^T (a_k k + b_k) / sqrt(kd)) applied to (a_v v + b_v), + a_pe pe + b_pe,
    from the raw qkv conv output (B, heads*(2kd+hd), H, W) and raw pe conv output (B, heads*hd, H, W).
    Returns (out (B, heads*hd, H, W), lse (B, heads, N) in log2 units, fp32; fp64 for fp64 inputs)."""
    _check(qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift, num_heads, key_dim, head_dim)
    qkv, pe = _dense(qkv), _dense(pe)
    qa, qb, pa, pb = (t.contiguous() for t in (qkv_scale, qkv_shift, pe_scale, pe_shift))
    B, _, Hh, Ww = qkv.shape
    N = Hh * Ww
    out = _like(qkv, num_heads * head_dim)
    lse = empty((B, num_heads, N), qkv, acc_dtype(qkv))
    if B * N == 0:
        return out, lse
    qk_scale = key_dim ** -0.5 * LOG2E
    args = (qkv, qa, qb, pe, pa, pb, out, lse, N, _n_bucket(N), num_heads, qk_scale, *_strides(qkv), *_strides(pe),
            *_strides(out))
    meta = dict(**_head_dims(key_dim, head_dim), **_kernel_meta(qkv))
    with on_device(qkv):
        if triton_interpreted():
            grid = (triton.cdiv(N, _INTERP_BLOCK), B * num_heads)
            _psa_fwd[grid](*args, BLOCK_M=_INTERP_BLOCK, BLOCK_N=_INTERP_BLOCK, **meta)
        else:
            _psa_fwd[lambda m: (triton.cdiv(N, m["BLOCK_M"]), B * num_heads)](*args, **meta)
    return out, lse


@psa_attn_fwd.register_fake
def _(qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift, num_heads, key_dim, head_dim):
    _check(qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift, num_heads, key_dim, head_dim)
    B, _, Hh, Ww = qkv.shape
    return _like(_dense(qkv), num_heads * head_dim), qkv.new_empty((B, num_heads, Hh * Ww), dtype=acc_dtype(qkv))


@torch.library.custom_op(op_name("psa_attn_bwd"), mutates_args=())
def psa_attn_bwd(dout: torch.Tensor, qkv: torch.Tensor, qkv_scale: torch.Tensor, qkv_shift: torch.Tensor,
                 pe: torch.Tensor, pe_scale: torch.Tensor, pe_shift: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, num_heads: int, key_dim: int, head_dim: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of psa_attn_fwd's `out` w.r.t. (qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift)."""
    _check(qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift, num_heads, key_dim, head_dim)
    dout, qkv, pe, out = (_dense(t) for t in (dout, qkv, pe, out))
    lse = lse.contiguous()
    qa, qb, pa, pb = (t.contiguous() for t in (qkv_scale, qkv_shift, pe_scale, pe_shift))
    B, CQ, Hh, Ww = qkv.shape
    N = Hh * Ww
    C = num_heads * head_dim
    acc_t = acc_dtype(qkv)
    if B * N == 0:
        z = lambda t: torch.zeros_like(t)  # noqa: E731  (dense t: its strides are kept)
        return z(qkv), z(qkv_scale), z(qkv_shift), z(pe), z(pe_scale), z(pe_shift)
    interp = triton_interpreted()
    rows, inner = _bwd_tiles(qkv)
    nblk = triton.cdiv(N, rows)
    meta = _kernel_meta(qkv)

    delta = empty((B, num_heads, N), qkv, acc_t)
    dpe = poison(torch.empty_like(pe))  # pe's strides, which the pre kernel writes it with
    ppa = empty((B * nblk, C), qkv, acc_t)  # partial sums of the pe scale / shift gradients
    ppb = empty((B * nblk, C), qkv, acc_t)
    dqkv = poison(torch.empty_like(qkv))  # qkv's strides
    pqa = empty((B * nblk, CQ), qkv, acc_t)  # every channel: q, k by the dq kernel, v by dkdv
    pqb = empty((B * nblk, CQ), qkv, acc_t)  # q channels only (dq kernel)
    sm_scale = key_dim ** -0.5
    qk_scale = sm_scale * LOG2E
    dims = dict(**_head_dims(key_dim, head_dim), **meta)
    grid = (nblk, B * num_heads)
    with on_device(qkv):
        _psa_bwd_pre_kernel[grid](out, dout, pe, pa, pb, qb, delta, dpe, ppa, ppb, N, num_heads, *_strides(out),
                                  *_strides(dout), *_strides(pe), KD=key_dim, HD=head_dim,
                                  HD_P=next_pow2(head_dim, 16), BLOCK_M=rows, ACC=meta["ACC"], num_warps=4)
        _psa_bwd_dkdv[grid](qkv, qa, qb, dout, lse, delta, dqkv, pqa, N, _n_bucket(N), num_heads, qk_scale,
                            *_strides(qkv), *_strides(dout), BLOCK_M=inner, BLOCK_N=rows, **dims)
        _psa_bwd_dq[grid](qkv, qa, qb, dout, lse, delta, dqkv, pqa, pqb, N, _n_bucket(N), num_heads, qk_scale,
                          sm_scale, *_strides(qkv), *_strides(dout), BLOCK_M=rows, BLOCK_N=inner, **dims)
    dqa, dqb = torch.empty_like(qkv_scale), torch.empty_like(qkv_shift)
    dpa, dpb = torch.empty_like(pe_scale), torch.empty_like(pe_shift)
    block = 1024 if interp else 256
    with on_device(qkv):
        _psa_sums_kernel[(triton.cdiv(max(CQ, C), block),)](pqa, pqb, ppa, ppb, dqa, dqb, dpa, dpb, B * nblk, CQ, C,
                                                            KD=key_dim, HD=head_dim, ACC=meta["ACC"], BLOCK=block)
    return dqkv, dqa, dqb, dpe, dpa, dpb


@psa_attn_bwd.register_fake
def _(dout, qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift, out, lse, num_heads, key_dim, head_dim):
    _check(qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift, num_heads, key_dim, head_dim)
    qkv, pe = _dense(qkv), _dense(pe)
    return tuple(torch.empty_like(t) for t in (qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift))


def _setup_context(ctx, inputs, output):
    qkv, qa, qb, pe, pa, pb, num_heads, key_dim, head_dim = inputs
    out, lse = output
    ctx.save_for_backward(qkv, qa, qb, pe, pa, pb, out, lse)
    ctx.dims = (num_heads, key_dim, head_dim)


def _backward(ctx, dout, dlse):
    # lse is an internal by-product (the backward's softmax statistics), not differentiable
    qkv, qa, qb, pe, pa, pb, out, lse = ctx.saved_tensors
    grads = psa_attn_bwd(dout, qkv, qa, qb, pe, pa, pb, out, lse, *ctx.dims)
    return (*grads, None, None, None)


psa_attn_fwd.register_autograd(_backward, setup_context=_setup_context)


def _v_norm_launch(qkv, qa, qb, num_heads, key_dim, head_dim, gout=None):
    """v_norm = BN_qkv(v) (gout None), or the gradients (dqkv, dqa, dqb) of it for gout."""
    B, CQ, Hh, Ww = qkv.shape
    N = Hh * Ww
    interp = triton_interpreted()
    bn, bc = (64, min(next_pow2(CQ), 256)) if interp else (64, 64)
    nblk = triton.cdiv(N, bn)
    grid = (triton.cdiv(CQ, bc), B * nblk)
    meta = dict(KD=key_dim, HD=head_dim, ACC=tl_acc(qkv.dtype), BLOCK_N=bn, BLOCK_C=bc, num_warps=4)
    if gout is None:
        out = empty_4d((B, num_heads * head_dim, Hh, Ww), qkv)
        if B * N:
            with on_device(qkv):
                _v_norm_kernel[grid](qkv, qa, qb, out, out, qkv, qa, qa, N, nblk, CQ, *_strides(qkv), *_strides(out),
                                     BACKWARD=False, **meta)
        return out
    gout = _dense(gout)
    dqkv = poison(torch.empty_like(qkv))
    sd = acc_dtype(qkv)
    pga, pgb = empty((B * nblk, CQ), qkv, sd), empty((B * nblk, CQ), qkv, sd)
    with on_device(qkv):
        _v_norm_kernel[grid](qkv, qa, qb, gout, gout, dqkv, pga, pgb, N, nblk, CQ, *_strides(qkv), *_strides(gout),
                             BACKWARD=True, **meta)
        return dqkv, sum_partials(pga, torch.empty_like(qa)), sum_partials(pgb, torch.empty_like(qb))


@torch.library.custom_op(op_name("psa_v_norm"), mutates_args=())
def psa_v_norm(qkv: torch.Tensor, qkv_scale: torch.Tensor, qkv_shift: torch.Tensor, num_heads: int, key_dim: int,
               head_dim: int) -> torch.Tensor:
    """BN_qkv(v) (B, heads * hd, H, W) in qkv's dtype and layout: the v channels of the raw qkv with their BN
    affine applied (the pe conv's input)."""
    check_device(qkv)
    qkv = _dense(qkv)
    return _v_norm_launch(qkv, qkv_scale.contiguous(), qkv_shift.contiguous(), num_heads, key_dim, head_dim)


@psa_v_norm.register_fake
def _(qkv, qkv_scale, qkv_shift, num_heads, key_dim, head_dim):
    return empty_4d((qkv.shape[0], num_heads * head_dim, *qkv.shape[2:]), _dense(qkv))


@torch.library.custom_op(op_name("psa_v_norm_backward"), mutates_args=())
def psa_v_norm_backward(grad: torch.Tensor, qkv: torch.Tensor, qkv_scale: torch.Tensor, num_heads: int,
                        key_dim: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad qkv (0 on q / k channels), grad qkv_scale, grad qkv_shift (0 off the v channels)) of psa_v_norm."""
    qkv = _dense(qkv)
    return _v_norm_launch(qkv, qkv_scale.contiguous(), qkv_scale, num_heads, key_dim, head_dim, gout=grad)


@psa_v_norm_backward.register_fake
def _(grad, qkv, qkv_scale, num_heads, key_dim, head_dim):
    return torch.empty_like(_dense(qkv)), torch.empty_like(qkv_scale), torch.empty_like(qkv_scale)


def _v_norm_setup(ctx, inputs, output):
    qkv, qa, _, num_heads, key_dim, head_dim = inputs
    ctx.save_for_backward(qkv, qa)
    ctx.dims = (num_heads, key_dim, head_dim)


def _v_norm_grad(ctx, grad):
    qkv, qa = ctx.saved_tensors
    return (*psa_v_norm_backward(grad, qkv, qa, *ctx.dims), None, None, None)


psa_v_norm.register_autograd(_v_norm_grad, setup_context=_v_norm_setup)


# --------------------------------------------------------------------------------------------------------
# Functional entry points
# --------------------------------------------------------------------------------------------------------
def psa_attention(qkv_raw, qkv_bn, pe_weight, pe_bn, num_heads, key_dim, head_dim, training, pe_bias=None):
    """Attention.forward of yolov10.modules before `proj`, on the fused Triton op.

    qkv_raw: the raw qkv 1x1-conv output (B, heads*(2kd+hd), H, W); qkv_bn / pe_bn: the nn.BatchNorm2d of qkv
    and pe (None where the BN is folded into the conv; pe_bias is then the folded pe conv's bias);
    pe_weight: the depthwise 3x3 weight (heads*hd, 1, 3, 3); training: batch statistics and running-stat
    updates (as the module's .training). Returns (B, heads*hd, H, W)."""
    C = num_heads * head_dim
    qkv_raw = _dense(qkv_raw)  # NCHW or channels_last: no copy (the kernels read strides)
    qa, qb = scale_shift(qkv_raw, qkv_bn, training)
    # pe's input is the normalised v (one elementwise op, in qkv's layout), then cuDNN's depthwise conv
    v_norm = psa_v_norm(qkv_raw, qa, qb, num_heads, key_dim, head_dim)
    pe_raw = F.conv2d(v_norm, pe_weight, pe_bias, padding=pe_weight.shape[-1] // 2, groups=C)
    pa, pb = scale_shift(pe_raw, pe_bn, training)
    return psa_attn_fwd(qkv_raw, qa, qb, pe_raw, pa, pb, num_heads, key_dim, head_dim)[0]


def _torch_attention(attend, qkv_raw, qkv_bn, pe_weight, pe_bn, num_heads, key_dim, head_dim, training,
                     pe_bias=None):
    B, _, Hh, Ww = qkv_raw.shape
    N, C = Hh * Ww, num_heads * head_dim
    qkv = batch_norm(qkv_raw, qkv_bn, training)
    q, k, v = qkv.view(B, num_heads, 2 * key_dim + head_dim, N).split([key_dim, key_dim, head_dim], dim=2)
    x = attend(q, k, v).reshape(B, C, Hh, Ww)
    pe = F.conv2d(v.reshape(B, C, Hh, Ww), pe_weight, pe_bias, padding=pe_weight.shape[-1] // 2, groups=C)
    return x + batch_norm(pe, pe_bn, training)


def psa_attention_sdpa(qkv_raw, qkv_bn, pe_weight, pe_bn, num_heads, key_dim, head_dim, training, pe_bias=None):
    """psa_attention in plain PyTorch with F.scaled_dot_product_attention (key dim != value dim: the math or
    memory-efficient backend): the torch.compile baseline of the benchmark."""
    def attend(q, k, v):  # (B, h, d, N) -> SDPA's (B, h, N, d) and back
        o = F.scaled_dot_product_attention(q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1),
                                           scale=key_dim ** -0.5)
        return o.transpose(-2, -1)
    return _torch_attention(attend, qkv_raw, qkv_bn, pe_weight, pe_bn, num_heads, key_dim, head_dim, training,
                            pe_bias)


def psa_attention_reference(qkv_raw, qkv_bn, pe_weight, pe_bn, num_heads, key_dim, head_dim, training,
                            pe_bias=None):
    """psa_attention as the eager reference computes it (B x heads x N x N scores in memory)."""
    def attend(q, k, v):
        attn = ((q.transpose(-2, -1) @ k) * key_dim ** -0.5).softmax(dim=-1)
        return v @ attn.transpose(-2, -1)
    return _torch_attention(attend, qkv_raw, qkv_bn, pe_weight, pe_bn, num_heads, key_dim, head_dim, training,
                            pe_bias)
