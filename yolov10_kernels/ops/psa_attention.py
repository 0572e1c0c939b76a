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
  the gradient of the raw qkv tensor and, as per-block partial sums reduced by torch, the gradients of the
  per-channel scales and shifts (of qkv's BN and of pe's).

What stays outside, and why:
  * the per-channel batch statistics (torch.var_mean in fp32, differentiable): they are a reduction over
    (B, H, W) that must finish before any tile can be normalised, so they cannot live in the attention
    kernel. Because the kernel takes the scale and shift as inputs and returns their gradients, autograd
    through var_mean supplies exactly the mean/var terms of the BN backward.
  * the depthwise 3x3 conv of pe runs on the normalised v through cuDNN (its input is BN_qkv(v), whose
    statistics are global, and its own BN needs the statistics of its output before the add), so it is a
    separate (cheap: B x C x N x 9 MACs) conv; only its BN affine and the add are fused.
  * `proj` and the PSA FFN stay cuBLAS/cuDNN 1x1 convs: they mix all heads' channels (a kernel that fused
    proj would need every head of a token block in one program and lose the per-(batch, head) grid), they
    are GEMMs that cuBLAS runs near peak, and their training-mode BN needs the statistics of the whole
    output before normalising, i.e. another pass anyway.

Entry points:
  * `psa_attention(qkv_raw, qkv_bn, pe_weight, pe_bn, num_heads, key_dim, head_dim, training, pe_bias=None)`:
    the functional form of Attention.forward before proj (BN statistics, running-stat updates, pe conv, the
    fused op). Differentiable.
  * `torch.ops.yolov10_kernels.psa_attn_fwd / psa_attn_bwd`: the registered ops on raw tensors.
  * `psa_attention_sdpa(...)`: the same computation in plain PyTorch with F.scaled_dot_product_attention
    (kd != hd); the torch.compile baseline of the benchmark.
  * `psa_attention_reference(...)`: the eager reference (matmul + softmax), same signature.

Registration: torch.library.custom_op (opaque to torch.compile) rather than triton_op, because under
TRITON_INTERPRET=1 (the CPU test path) wrap_triton hands back the raw interpreted kernel and any trace of a
triton_op body (fake tensors, functionalisation) would launch it on fake tensors; with custom_op the op
compiles with fullgraph=True on the CPU and on the GPU alike, and the kernels are large enough that
Inductor seeing inside them would buy nothing.
"""
import contextlib

import torch
import torch.nn.functional as F

from .batchnorm import batch_norm, scale_shift
from .utils import (acc_dtype, check_device, dot_precision, empty, next_pow2, op_name, tl, tl_acc, triton,
                    triton_interpreted)

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

# --------------------------------------------------------------------------------------------------------
# Triton kernels. Memory layout: qkv (B, heads * G, N) with G = 2 KD + HD, token index contiguous; head h's
# q channel d is h*G + d, k is h*G + KD + d, v is h*G + 2KD + c. out / pe / dout: (B, heads * HD, N).
# Head dims are padded to powers of two (KD_P, HD_P) with masks (padded lanes load as 0 and q's padded
# lanes are forced to 0 after its affine).
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
    def _psa_fwd_kernel(QKV, QA, QB, PE, PA, PB, OUT, LSE, N, H, qk_scale,
                        KD: tl.constexpr, HD: tl.constexpr, KD_P: tl.constexpr, HD_P: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
                        DOT_PREC: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        G: tl.constexpr = 2 * KD + HD
        DT = QKV.dtype.element_ty
        qkv = QKV + b.to(tl.int64) * (H * G * N) + h * G * N
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_kd = tl.arange(0, KD_P)
        offs_hd = tl.arange(0, HD_P)
        mask_m = offs_m < N
        mkd = offs_kd < KD
        mhd = offs_hd < HD
        qa = tl.load(QA + h * G + offs_kd, mask=mkd, other=0).to(ACC)
        qb = tl.load(QB + h * G + offs_kd, mask=mkd, other=0).to(ACC)
        ka = tl.load(QA + h * G + KD + offs_kd, mask=mkd, other=0).to(ACC) * qk_scale

        # q' = (a_q q + b_q) * a_k * scale * log2(e): [BLOCK_M, KD_P]
        qmask = mask_m[:, None] & mkd[None, :]
        q = tl.load(qkv + offs_kd[None, :] * N + offs_m[:, None], mask=qmask, other=0).to(ACC)
        q = tl.where(qmask, (q * qa[None, :] + qb[None, :]) * ka[None, :], 0).to(DT)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
        l_i = tl.zeros([BLOCK_M], dtype=ACC)
        acc = tl.zeros([BLOCK_M, HD_P], dtype=ACC)
        for start_n in range(0, N, BLOCK_N):
            cols = start_n + offs_n
            mask_n = cols < N
            kt = tl.load(qkv + (KD + offs_kd)[:, None] * N + cols[None, :],
                         mask=mkd[:, None] & mask_n[None, :], other=0)  # raw [KD_P, BLOCK_N]
            s = tl.dot(q, kt, input_precision=DOT_PREC).to(ACC)
            s = tl.where(mask_n[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(qkv + (2 * KD + offs_hd)[None, :] * N + cols[:, None],
                        mask=mask_n[:, None] & mhd[None, :], other=0)  # raw [BLOCK_N, HD_P]
            acc = acc * alpha[:, None] + tl.dot(p.to(DT), v, input_precision=DOT_PREC).to(ACC)
            m_i = m_new
        # epilogue: the v affine, + BN_pe(pe_raw)
        va = tl.load(QA + h * G + 2 * KD + offs_hd, mask=mhd, other=0).to(ACC)
        vb = tl.load(QB + h * G + 2 * KD + offs_hd, mask=mhd, other=0).to(ACC)
        pa = tl.load(PA + h * HD + offs_hd, mask=mhd, other=0).to(ACC)
        pb = tl.load(PB + h * HD + offs_hd, mask=mhd, other=0).to(ACC)
        omask = mask_m[:, None] & mhd[None, :]
        o_off = b.to(tl.int64) * (H * HD * N) + (h * HD + offs_hd)[None, :] * N + offs_m[:, None]
        pe = tl.load(PE + o_off, mask=omask, other=0).to(ACC)
        o = acc / l_i[:, None] * va[None, :] + (vb + pb)[None, :] + pe * pa[None, :]
        tl.store(OUT + o_off, o.to(OUT.dtype.element_ty), mask=omask)
        tl.store(LSE + pid_bh.to(tl.int64) * N + offs_m, m_i + tl.log2(l_i), mask=mask_m)

    @triton.jit
    def _psa_bwd_pre_kernel(OUT, DOUT, PE, PA, PB, QB, DELTA, DPE, PPA, PPB, N, H, KD: tl.constexpr,
                            HD: tl.constexpr, HD_P: tl.constexpr, BLOCK_M: tl.constexpr, ACC: tl.constexpr):
        """delta' = rowsum(dout * (O - b_v)) with O = out - BN_pe(pe); d pe_raw = dout * pe_scale; per-block
        partial sums of the pe scale / shift gradients (the shift's is also the v shift's)."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_hd = tl.arange(0, HD_P)
        mask_m = offs_m < N
        mhd = offs_hd < HD
        omask = mask_m[:, None] & mhd[None, :]
        off = b.to(tl.int64) * (H * HD * N) + (h * HD + offs_hd)[None, :] * N + offs_m[:, None]
        pa = tl.load(PA + h * HD + offs_hd, mask=mhd, other=0).to(ACC)
        pb = tl.load(PB + h * HD + offs_hd, mask=mhd, other=0).to(ACC)
        vb = tl.load(QB + h * (2 * KD + HD) + 2 * KD + offs_hd, mask=mhd, other=0).to(ACC)
        out = tl.load(OUT + off, mask=omask, other=0).to(ACC)
        do = tl.load(DOUT + off, mask=omask, other=0).to(ACC)
        pe = tl.load(PE + off, mask=omask, other=0).to(ACC)
        o = tl.where(omask, out - pe * pa[None, :] - (pb + vb)[None, :], 0)
        tl.store(DELTA + pid_bh.to(tl.int64) * N + offs_m, tl.sum(do * o, 1), mask=mask_m)
        tl.store(DPE + off, (do * pa[None, :]).to(DPE.dtype.element_ty), mask=omask)
        prow = (b.to(tl.int64) * tl.num_programs(0) + pid_m) * (H * HD) + h * HD + offs_hd
        tl.store(PPA + prow, tl.sum(do * pe, 0), mask=mhd)
        tl.store(PPB + prow, tl.sum(do, 0), mask=mhd)

    @triton.jit
    def _psa_bwd_dkdv_kernel(QKV, QA, QB, DOUT, LSE, DELTA, DQKV, PA_, N, H, qk_scale,
                             KD: tl.constexpr, HD: tl.constexpr, KD_P: tl.constexpr, HD_P: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
                             DOT_PREC: tl.constexpr):
        """One key block of one (batch, head): dK, dV over all query blocks, then the raw-qkv gradients of
        the k and v channels and the partial sums of the v scale gradient."""
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        G: tl.constexpr = 2 * KD + HD
        DT = QKV.dtype.element_ty
        base = b.to(tl.int64) * (H * G * N) + h * G * N
        qkv = QKV + base
        dout = DOUT + b.to(tl.int64) * (H * HD * N) + h * HD * N
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_kd = tl.arange(0, KD_P)
        offs_hd = tl.arange(0, HD_P)
        mask_n = offs_n < N
        mkd = offs_kd < KD
        mhd = offs_hd < HD
        qa = tl.load(QA + h * G + offs_kd, mask=mkd, other=0).to(ACC)
        qb = tl.load(QB + h * G + offs_kd, mask=mkd, other=0).to(ACC)
        ka = tl.load(QA + h * G + KD + offs_kd, mask=mkd, other=0).to(ACC) * qk_scale
        va = tl.load(QA + h * G + 2 * KD + offs_hd, mask=mhd, other=0).to(ACC)
        kmask = mask_n[:, None] & mkd[None, :]
        k = tl.load(qkv + (KD + offs_kd)[None, :] * N + offs_n[:, None], mask=kmask, other=0)  # raw
        vmask = mask_n[:, None] & mhd[None, :]
        v = tl.load(qkv + (2 * KD + offs_hd)[None, :] * N + offs_n[:, None], mask=vmask, other=0).to(ACC)
        v = (v * va[None, :]).to(DT)  # a_v v: [BLOCK_N, HD_P]

        dk = tl.zeros([BLOCK_N, KD_P], dtype=ACC)
        dv = tl.zeros([BLOCK_N, HD_P], dtype=ACC)
        for start_m in range(0, N, BLOCK_M):
            rows = start_m + offs_m
            mask_m = rows < N
            qmask = mkd[:, None] & mask_m[None, :]
            qt = tl.load(qkv + offs_kd[:, None] * N + rows[None, :], mask=qmask, other=0).to(ACC)
            qt = tl.where(qmask, (qt * qa[:, None] + qb[:, None]) * ka[:, None], 0).to(DT)  # q'^T
            dot_ = tl.load(dout + offs_hd[:, None] * N + rows[None, :], mask=mhd[:, None] & mask_m[None, :],
                           other=0)  # [HD_P, BLOCK_M]
            lse = tl.load(LSE + pid_bh.to(tl.int64) * N + rows, mask=mask_m, other=0).to(ACC)
            delta = tl.load(DELTA + pid_bh.to(tl.int64) * N + rows, mask=mask_m, other=0).to(ACC)
            st = tl.dot(k, qt, input_precision=DOT_PREC).to(ACC)  # [BLOCK_N, BLOCK_M]
            pt = tl.exp2(st - lse[None, :])
            pt = tl.where(mask_n[:, None] & mask_m[None, :], pt, 0)
            dv += tl.dot(pt.to(DT), tl.trans(dot_), input_precision=DOT_PREC).to(ACC)
            dpt = tl.dot(v, dot_, input_precision=DOT_PREC).to(ACC)
            dst = pt * (dpt - delta[None, :])
            dk += tl.dot(dst.to(DT), tl.trans(qt), input_precision=DOT_PREC).to(ACC)
        dk = dk * _LN2  # = d raw k: q' carries a_k * scale * log2(e); the gradient wants a_k * scale

        # d raw v = a_v * dV; partial sums (this key block) of d a_v = sum_j dV_j * v_j, per channel. The
        # 2-D offsets are rebuilt in another association order so that they are not kept live in registers
        # through the loop; the raw v tile is read again rather than kept.
        k_off = offs_n[:, None] + (KD * N + offs_kd * N)[None, :]
        v_off = offs_n[:, None] + (2 * KD * N + offs_hd * N)[None, :]
        dqkv = DQKV + base
        tl.store(dqkv + k_off, dk.to(DQKV.dtype.element_ty), mask=kmask)
        tl.store(dqkv + v_off, (dv * va[None, :]).to(DQKV.dtype.element_ty), mask=vmask)
        v_raw = tl.load(qkv + v_off, mask=vmask, other=0).to(ACC)
        prow = (b.to(tl.int64) * tl.num_programs(0) + pid_n) * (H * G) + h * G
        tl.store(PA_ + prow + 2 * KD + offs_hd, tl.sum(tl.where(vmask, dv, 0) * v_raw, 0), mask=mhd)

    @triton.jit
    def _psa_bwd_dq_kernel(QKV, QA, QB, DOUT, LSE, DELTA, DQKV, PA_, PB_, N, H, qk_scale, sm_scale,
                           KD: tl.constexpr, HD: tl.constexpr, KD_P: tl.constexpr, HD_P: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
                           DOT_PREC: tl.constexpr):
        """One query block of one (batch, head): dQ over all key blocks, then the raw-qkv gradient of the q
        channels and the partial sums of the q scale / shift and k scale gradients."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        G: tl.constexpr = 2 * KD + HD
        DT = QKV.dtype.element_ty
        base = b.to(tl.int64) * (H * G * N) + h * G * N
        qkv = QKV + base
        dout = DOUT + b.to(tl.int64) * (H * HD * N) + h * HD * N
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_kd = tl.arange(0, KD_P)
        offs_hd = tl.arange(0, HD_P)
        mask_m = offs_m < N
        mkd = offs_kd < KD
        mhd = offs_hd < HD
        qa = tl.load(QA + h * G + offs_kd, mask=mkd, other=0).to(ACC)
        qb = tl.load(QB + h * G + offs_kd, mask=mkd, other=0).to(ACC)
        ka = tl.load(QA + h * G + KD + offs_kd, mask=mkd, other=0).to(ACC)
        va = tl.load(QA + h * G + 2 * KD + offs_hd, mask=mhd, other=0).to(ACC)
        qmask = mask_m[:, None] & mkd[None, :]
        q = tl.load(qkv + offs_kd[None, :] * N + offs_m[:, None], mask=qmask, other=0).to(ACC)
        q = tl.where(qmask, (q * qa[None, :] + qb[None, :]) * (ka * qk_scale)[None, :], 0).to(DT)  # q'
        domask = mask_m[:, None] & mhd[None, :]
        do = tl.load(dout + offs_hd[None, :] * N + offs_m[:, None], mask=domask, other=0).to(ACC)
        do = (do * va[None, :]).to(DT)  # a_v dO: [BLOCK_M, HD_P]
        lse = tl.load(LSE + pid_bh.to(tl.int64) * N + offs_m, mask=mask_m, other=0).to(ACC)
        delta = tl.load(DELTA + pid_bh.to(tl.int64) * N + offs_m, mask=mask_m, other=0).to(ACC)

        t = tl.zeros([BLOCK_M, KD_P], dtype=ACC)
        for start_n in range(0, N, BLOCK_N):
            cols = start_n + offs_n
            mask_n = cols < N
            kt = tl.load(qkv + (KD + offs_kd)[:, None] * N + cols[None, :],
                         mask=mkd[:, None] & mask_n[None, :], other=0)  # raw [KD_P, BLOCK_N]
            vt = tl.load(qkv + (2 * KD + offs_hd)[:, None] * N + cols[None, :],
                         mask=mhd[:, None] & mask_n[None, :], other=0)  # raw [HD_P, BLOCK_N]
            s = tl.dot(q, kt, input_precision=DOT_PREC).to(ACC)
            p = tl.exp2(s - lse[:, None])
            p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0)
            dp = tl.dot(do, vt, input_precision=DOT_PREC).to(ACC)
            ds = p * (dp - delta[:, None])
            t += tl.dot(ds.to(DT), tl.trans(kt), input_precision=DOT_PREC).to(ACC)
        t = tl.where(qmask, t * sm_scale, 0)  # T_i = scale * sum_j dS_ij k_j (raw k)

        # dQn = a_k T; d raw q = a_q dQn; partial sums of d a_q = sum dQn * q, d b_q = sum dQn and
        # d a_k = sum (a_q q + b_q) * T (offsets rebuilt: see the dkdv kernel)
        q_off = offs_m[:, None] + (offs_kd * N)[None, :]
        dqn = t * ka[None, :]
        tl.store(DQKV + base + q_off, (dqn * qa[None, :]).to(DQKV.dtype.element_ty), mask=qmask)
        q_raw = tl.load(qkv + q_off, mask=qmask, other=0).to(ACC)
        prow = (b.to(tl.int64) * tl.num_programs(0) + pid_m) * (H * G) + h * G
        tl.store(PA_ + prow + offs_kd, tl.sum(dqn * q_raw, 0), mask=mkd)
        tl.store(PB_ + prow + offs_kd, tl.sum(dqn, 0), mask=mkd)
        tl.store(PA_ + prow + KD + offs_kd, tl.sum(t * (q_raw * qa[None, :] + qb[None, :]), 0), mask=mkd)

    def _gpu_autotune(configs, key):
        """Multi-config autotune only on a real GPU (the interpreter cannot autotune two or more configs)."""
        def wrap(kernel):
            return kernel if triton_interpreted() else triton.autotune(configs=configs, key=key)(kernel)
        return wrap

    _FWD_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                    for bm in (64, 128) for bn in (32, 64) for w in (4, 8) for s in (2, 3)
                    if not (bm == 128 and w == 4)]
    # The backward kernels' tile sizes are fixed by the launcher (the partial-sum buffers have one row per
    # block), so only warps and pipelining are tuned.
    _BWD_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (1, 2, 3)]
    _KEY = ["N", "KD_P", "HD_P"]
    _psa_fwd = _gpu_autotune(_FWD_CONFIGS, _KEY)(_psa_fwd_kernel)
    _psa_bwd_dkdv = _gpu_autotune(_BWD_CONFIGS, _KEY)(_psa_bwd_dkdv_kernel)
    _psa_bwd_dq = _gpu_autotune(_BWD_CONFIGS, _KEY)(_psa_bwd_dq_kernel)

# tile sizes: the interpreter runs programs one after another, so fewer, larger blocks are faster there,
# but 32 still gives several blocks (and the masked tail) at the test shapes
_BWD_BLOCK_GPU = 64  # rows per program of the dq and dkdv kernels (and rows of the partial-sum buffers)
_BWD_INNER_GPU = 32  # the tile they loop over
_INTERP_BLOCK = 32


def _on_device(t):
    """Launch on t's GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _kernel_meta(qkv):
    return {"ACC": tl_acc(qkv.dtype), "DOT_PREC": dot_precision(qkv)}


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
    qkv, pe = qkv.contiguous(), pe.contiguous()
    qa, qb, pa, pb = (t.contiguous() for t in (qkv_scale, qkv_shift, pe_scale, pe_shift))
    B, _, Hh, Ww = qkv.shape
    N = Hh * Ww
    out = empty((B, num_heads * head_dim, Hh, Ww), qkv)
    lse = empty((B, num_heads, N), qkv, acc_dtype(qkv))
    if B * N == 0:
        return out, lse
    qk_scale = key_dim ** -0.5 * LOG2E
    args = (qkv, qa, qb, pe, pa, pb, out, lse, N, num_heads, qk_scale)
    meta = dict(KD=key_dim, HD=head_dim, KD_P=next_pow2(key_dim, 16), HD_P=next_pow2(head_dim, 16),
                **_kernel_meta(qkv))
    with _on_device(qkv):
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
    return (qkv.new_empty((B, num_heads * head_dim, Hh, Ww)),
            qkv.new_empty((B, num_heads, Hh * Ww), dtype=acc_dtype(qkv)))


@torch.library.custom_op(op_name("psa_attn_bwd"), mutates_args=())
def psa_attn_bwd(dout: torch.Tensor, qkv: torch.Tensor, qkv_scale: torch.Tensor, qkv_shift: torch.Tensor,
                 pe: torch.Tensor, pe_scale: torch.Tensor, pe_shift: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, num_heads: int, key_dim: int, head_dim: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of psa_attn_fwd's `out` w.r.t. (qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift)."""
    _check(qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift, num_heads, key_dim, head_dim)
    dout, qkv, pe, out, lse = (t.contiguous() for t in (dout, qkv, pe, out, lse))
    qa, qb, pa, pb = (t.contiguous() for t in (qkv_scale, qkv_shift, pe_scale, pe_shift))
    B, CQ, Hh, Ww = qkv.shape
    N = Hh * Ww
    C = num_heads * head_dim
    acc_t = acc_dtype(qkv)
    if B * N == 0:
        z = lambda t: torch.zeros_like(t)  # noqa: E731
        return z(qkv), z(qkv_scale), z(qkv_shift), z(pe), z(pe_scale), z(pe_shift)
    interp = triton_interpreted()
    rows = _INTERP_BLOCK if interp else _BWD_BLOCK_GPU
    inner = _INTERP_BLOCK if interp else _BWD_INNER_GPU
    nblk = triton.cdiv(N, rows)
    meta = _kernel_meta(qkv)
    HD_P, KD_P = next_pow2(head_dim, 16), next_pow2(key_dim, 16)

    delta = empty((B, num_heads, N), qkv, acc_t)
    dpe = empty(pe.shape, pe)
    ppa = empty((B * nblk, C), qkv, acc_t)  # partial sums of the pe scale / shift gradients
    ppb = empty((B * nblk, C), qkv, acc_t)
    dqkv = empty(qkv.shape, qkv)
    pqa = empty((B * nblk, CQ), qkv, acc_t)  # every channel: q, k by the dq kernel, v by dkdv
    pqb = empty((B * nblk, CQ), qkv, acc_t)  # q channels only (dq kernel)
    sm_scale = key_dim ** -0.5
    qk_scale = sm_scale * LOG2E
    dims = dict(KD=key_dim, HD=head_dim, KD_P=KD_P, HD_P=HD_P, **meta)
    grid = (nblk, B * num_heads)
    with _on_device(qkv):
        _psa_bwd_pre_kernel[grid](out, dout, pe, pa, pb, qb, delta, dpe, ppa, ppb, N, num_heads, KD=key_dim,
                                  HD=head_dim, HD_P=HD_P, BLOCK_M=rows, ACC=meta["ACC"], num_warps=4)
        _psa_bwd_dkdv[grid](qkv, qa, qb, dout, lse, delta, dqkv, pqa, N, num_heads, qk_scale,
                            BLOCK_M=inner, BLOCK_N=rows, **dims)
        _psa_bwd_dq[grid](qkv, qa, qb, dout, lse, delta, dqkv, pqa, pqb, N, num_heads, qk_scale, sm_scale,
                          BLOCK_M=rows, BLOCK_N=inner, **dims)
    dpb = ppb.sum(0)
    # shift gradients: q from the dq kernel; k exactly 0 (a k shift adds a per-query constant to the
    # logits, which the softmax cancels); v = sum of dout = the pe shift's (sum_j P_ij = 1)
    dqb = torch.cat([pqb.view(-1, num_heads, 2 * key_dim + head_dim)[..., :key_dim].sum(0),
                     pqb.new_zeros(num_heads, key_dim), dpb.view(num_heads, head_dim)], dim=1).view(-1)
    return (dqkv, pqa.sum(0).to(qkv_scale.dtype), dqb.to(qkv_shift.dtype),
            dpe, ppa.sum(0).to(pe_scale.dtype), dpb.to(pe_shift.dtype))


@psa_attn_bwd.register_fake
def _(dout, qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift, out, lse, num_heads, key_dim, head_dim):
    _check(qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift, num_heads, key_dim, head_dim)
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


# --------------------------------------------------------------------------------------------------------
# Functional entry points
# --------------------------------------------------------------------------------------------------------
def _split_v(qkv_raw, num_heads, key_dim, head_dim):
    B, _, Hh, Ww = qkv_raw.shape
    return qkv_raw.view(B, num_heads, 2 * key_dim + head_dim, Hh * Ww)[:, :, 2 * key_dim:]


def psa_attention(qkv_raw, qkv_bn, pe_weight, pe_bn, num_heads, key_dim, head_dim, training, pe_bias=None):
    """Attention.forward of yolov10.modules before `proj`, on the fused Triton op.

    qkv_raw: the raw qkv 1x1-conv output (B, heads*(2kd+hd), H, W); qkv_bn / pe_bn: the nn.BatchNorm2d of qkv
    and pe (None where the BN is folded into the conv; pe_bias is then the folded pe conv's bias);
    pe_weight: the depthwise 3x3 weight (heads*hd, 1, 3, 3); training: batch statistics and running-stat
    updates (as the module's .training). Returns (B, heads*hd, H, W)."""
    C = num_heads * head_dim
    qkv_raw = qkv_raw.contiguous()  # (a channels_last conv output is copied once, here)
    B, _, Hh, Ww = qkv_raw.shape
    qa, qb = scale_shift(qkv_raw, qkv_bn, training)
    # pe's input is the normalised v: a (B, C, N) elementwise pass, then cuDNN's depthwise conv
    v = _split_v(qkv_raw, num_heads, key_dim, head_dim)
    G = 2 * key_dim + head_dim
    va = qa.view(num_heads, G)[:, 2 * key_dim:, None]
    vb = qb.view(num_heads, G)[:, 2 * key_dim:, None]
    v_norm = torch.addcmul(vb, v, va).to(qkv_raw.dtype).reshape(B, C, Hh, Ww)
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
