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
  * the per-channel batch statistics, the BN affine and the running-statistics update (ops/bn_batch_affine.py's
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
  * `torch.ops.yolov10_kernels.psa_attn / psa_attn_backward`: the registered ops on raw tensors;
    `psa_v_norm / psa_v_norm_backward` (psa_v_norm.py): BN_qkv(v), the pe conv's input.
  * the same computation in plain PyTorch (SDPA, and the eager matmul + softmax), the benchmark's and the tests'
    baselines: yolov10_kernels/testing/psa_baselines.py.

The kernels, their configs and tile sizes: psa_attention_kernels.py.

Registration: torch.library.custom_op (opaque to torch.compile) rather than triton_op, because under
TRITON_INTERPRET=1 (the CPU test path) wrap_triton hands back the raw interpreted kernel and any trace of a
triton_op body (fake tensors, functionalisation) would launch it on fake tensors; with custom_op the op
compiles with fullgraph=True on the CPU and on the GPU alike, and the kernels are large enough that
Inductor seeing inside them would buy nothing.
"""
import torch
import torch.nn.functional as F

from .bn_batch_affine import scale_shift
from .psa_v_norm import psa_v_norm
from .utils import (acc_dtype, check_device, dense_4d, dot_precision, empty, empty_4d, launch_tuned, next_pow2,
                    on_device, op_name, poison, size_bucket, sum_partials, tl_acc, token_strides, triton,
                    triton_interpreted)

if triton is not None:
    from .psa_attention_kernels import (_INTERP_BLOCK, _bwd_tiles, _psa_bwd_dkdv, _psa_bwd_dq, _psa_bwd_pre_kernel,
                                        _psa_fwd, _psa_sums_kernel)

LOG2E = 1.4426950408889634


def _kernel_meta(qkv):
    return {"ACC": tl_acc(qkv.dtype), "DOT_PREC": dot_precision(qkv)}


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
@torch.library.custom_op(op_name("psa_attn"), mutates_args=())
def psa_attn(qkv: torch.Tensor, qkv_scale: torch.Tensor, qkv_shift: torch.Tensor, pe: torch.Tensor,
                 pe_scale: torch.Tensor, pe_shift: torch.Tensor, num_heads: int, key_dim: int,
                 head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """out = softmax((a_q q + b_q)^T (a_k k + b_k) / sqrt(kd)) applied to (a_v v + b_v), + a_pe pe + b_pe,
    from the raw qkv conv output (B, heads*(2kd+hd), H, W) and raw pe conv output (B, heads*hd, H, W), per head
    over its N = H * W tokens (flash-style: online softmax in base 2, no N x N matrix in memory). Differentiable
    (register_autograd) in qkv, pe and the four scale / shift vectors; lse is not.

    Arguments:
        qkv: (B, heads*(2kd+hd), H, W), the raw qkv conv output, per head [q (kd) | k (kd) | v (hd)] channels;
            fp32/fp16/bf16/fp64, NCHW or channels_last (else copied to NCHW); on a CUDA device, or on the CPU only
            under TRITON_INTERPRET=1.
        qkv_scale, qkv_shift: (heads*(2kd+hd),) BN_qkv's per-channel affine, the accumulation dtype (fp32, fp64 for
            fp64 inputs; as bn_batch_affine.scale_shift gives it), qkv's device.
        pe: (B, heads*hd, H, W), the raw depthwise pe conv output, qkv's dtype, NCHW or channels_last, qkv's device.
        pe_scale, pe_shift: (heads*hd,) BN_pe's per-channel affine, the accumulation dtype, qkv's device.
        num_heads, key_dim (kd), head_dim (hd): the head count and the per-head q/k and v widths.

    Returns:
        out: (B, heads*hd, H, W) in qkv's dtype and memory format (channels_last when qkv is, else NCHW).
        lse: (B, heads, N), the softmax's log-sum-exp in log2 units (saved for the backward), fp32; fp64 for fp64
            inputs.

    Raises:
        ValueError: qkv or pe not 4-D; qkv's channels not num_heads * (2 key_dim + head_dim); pe not
            (B, heads*hd, H, W); a scale / shift vector without one element per channel of qkv / pe; pe's dtype
            not qkv's.
        RuntimeError: Triton cannot be imported; a CPU qkv without TRITON_INTERPRET=1, a CUDA qkv with it, or
            another device type (utils.check_device).
    """
    _check(qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift, num_heads, key_dim, head_dim)
    qkv, pe = dense_4d(qkv), dense_4d(pe)
    qa, qb, pa, pb = (t.contiguous() for t in (qkv_scale, qkv_shift, pe_scale, pe_shift))
    B, _, Hh, Ww = qkv.shape
    N = Hh * Ww
    out = _like(qkv, num_heads * head_dim)
    lse = empty((B, num_heads, N), qkv, acc_dtype(qkv))
    if B * N == 0:
        return out, lse
    qk_scale = key_dim ** -0.5 * LOG2E
    args = (qkv, qa, qb, pe, pa, pb, out, lse, N, size_bucket(N), num_heads, qk_scale, *token_strides(qkv), *token_strides(pe),
            *token_strides(out))
    meta = dict(**_head_dims(key_dim, head_dim), **_kernel_meta(qkv))
    launch_tuned(_psa_fwd, lambda m: (triton.cdiv(N, m["BLOCK_M"]), B * num_heads),
                 dict(BLOCK_M=_INTERP_BLOCK, BLOCK_N=_INTERP_BLOCK), args, meta)
    return out, lse


@psa_attn.register_fake
def _(qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift, num_heads, key_dim, head_dim):
    _check(qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift, num_heads, key_dim, head_dim)
    B, _, Hh, Ww = qkv.shape
    return _like(dense_4d(qkv), num_heads * head_dim), qkv.new_empty((B, num_heads, Hh * Ww), dtype=acc_dtype(qkv))


@torch.library.custom_op(op_name("psa_attn_backward"), mutates_args=())
def psa_attn_backward(dout: torch.Tensor, qkv: torch.Tensor, qkv_scale: torch.Tensor, qkv_shift: torch.Tensor,
                 pe: torch.Tensor, pe_scale: torch.Tensor, pe_shift: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, num_heads: int, key_dim: int, head_dim: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of psa_attn's `out` w.r.t. (qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift), FlashAttention-2
    style: delta = rowsum(dout * out), a dK/dV and a dQ kernel recomputing P from lse, the vector gradients from
    per-block partial sums (k's shift gradient is exactly 0: the softmax cancels it).

    Arguments:
        dout: (B, heads*hd, H, W), the gradient of out, qkv's dtype and device (copied to NCHW unless dense).
        qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift: the forward's inputs (see psa_attn): qkv
            (B, heads*(2kd+hd), H, W) on a CUDA device, or on the CPU only under TRITON_INTERPRET=1; pe
            (B, heads*hd, H, W); the vectors (heads*(2kd+hd),) / (heads*hd,) in the accumulation dtype.
        out, lse: the forward's outputs: (B, heads*hd, H, W) and (B, heads, N) (fp32; fp64 for fp64 inputs).
        num_heads, key_dim, head_dim: the forward's.

    Returns:
        grad qkv, grad pe: qkv's / pe's shape and dtype, with the strides of qkv / pe (NCHW or channels_last).
        grad qkv_scale, grad qkv_shift, grad pe_scale, grad pe_shift: each vector's shape and dtype.

    Raises:
        ValueError, RuntimeError: those of psa_attn's checks on (qkv, the vectors, pe, the head sizes); dout, out
            and lse are not checked.
    """
    _check(qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift, num_heads, key_dim, head_dim)
    dout, qkv, pe, out = (dense_4d(t) for t in (dout, qkv, pe, out))
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
        _psa_bwd_pre_kernel[grid](out, dout, pe, pa, pb, qb, delta, dpe, ppa, ppb, N, num_heads, *token_strides(out),
                                  *token_strides(dout), *token_strides(pe), KD=key_dim, HD=head_dim,
                                  HD_P=next_pow2(head_dim, 16), BLOCK_M=rows, ACC=meta["ACC"], num_warps=4)
    launch_tuned(_psa_bwd_dkdv, grid, {}, (qkv, qa, qb, dout, lse, delta, dqkv, pqa, N, size_bucket(N), num_heads,
                                       qk_scale, *token_strides(qkv), *token_strides(dout)),
                 dict(BLOCK_M=inner, BLOCK_N=rows, **dims))
    launch_tuned(_psa_bwd_dq, grid, {}, (qkv, qa, qb, dout, lse, delta, dqkv, pqa, pqb, N, size_bucket(N), num_heads,
                                     qk_scale, sm_scale, *token_strides(qkv), *token_strides(dout)),
                 dict(BLOCK_M=rows, BLOCK_N=inner, **dims))
    dqa, dqb = torch.empty_like(qkv_scale), torch.empty_like(qkv_shift)
    dpa, dpb = torch.empty_like(pe_scale), torch.empty_like(pe_shift)
    block = 1024 if interp else 256
    # the B * nblk block rows summed as trees (utils.sum_partials) into one buffer (one allocation), then that row
    # composed into the gradients
    row = empty((1, 2 * CQ + 2 * C), qkv, acc_t)
    sums = [sum_partials(t, row[:, a:a + t.shape[1]])
            for t, a in ((pqa, 0), (pqb, CQ), (ppa, 2 * CQ), (ppb, 2 * CQ + C))]
    with on_device(qkv):
        _psa_sums_kernel[(triton.cdiv(max(CQ, C), block),)](*sums, dqa, dqb, dpa, dpb, 1, CQ, C,
                                                            KD=key_dim, HD=head_dim, ACC=meta["ACC"], BLOCK=block)
    return dqkv, dqa, dqb, dpe, dpa, dpb


@psa_attn_backward.register_fake
def _(dout, qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift, out, lse, num_heads, key_dim, head_dim):
    _check(qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift, num_heads, key_dim, head_dim)
    qkv, pe = dense_4d(qkv), dense_4d(pe)
    return tuple(torch.empty_like(t) for t in (qkv, qkv_scale, qkv_shift, pe, pe_scale, pe_shift))


def _psa_attn_setup_context(ctx, inputs, output):
    qkv, qa, qb, pe, pa, pb, num_heads, key_dim, head_dim = inputs
    out, lse = output
    ctx.save_for_backward(qkv, qa, qb, pe, pa, pb, out, lse)
    ctx.dims = (num_heads, key_dim, head_dim)


def _psa_attn_autograd(ctx, dout, dlse):
    # lse is an internal by-product (the backward's softmax statistics), not differentiable
    qkv, qa, qb, pe, pa, pb, out, lse = ctx.saved_tensors
    grads = psa_attn_backward(dout, qkv, qa, qb, pe, pa, pb, out, lse, *ctx.dims)
    return (*grads, None, None, None)


psa_attn.register_autograd(_psa_attn_autograd, setup_context=_psa_attn_setup_context)


# --------------------------------------------------------------------------------------------------------
# Functional entry points
# --------------------------------------------------------------------------------------------------------
def psa_attention(qkv_raw, qkv_bn, pe_weight, pe_bn, num_heads, key_dim, head_dim, training, pe_bias=None):
    """Attention.forward of yolov10.modules before `proj`, on the fused Triton op.

    BN statistics and running-stat updates (bn_batch_affine.scale_shift), BN_qkv(v) (psa_v_norm), the pe conv (cuDNN),
    then the fused psa_attn op. Differentiable.

    Arguments:
        qkv_raw: the raw qkv 1x1-conv output (B, heads*(2kd+hd), H, W), fp32/fp16/bf16/fp64, NCHW or channels_last
            (else copied to NCHW); on a CUDA device, or on the CPU only under TRITON_INTERPRET=1.
        qkv_bn, pe_bn: the nn.BatchNorm2d of qkv and pe (None where the BN is folded into the conv).
        pe_weight: the depthwise 3x3 weight (heads*hd, 1, 3, 3), qkv_raw's dtype and device.
        num_heads, key_dim (kd), head_dim (hd): the head count and the per-head q/k and v widths.
        training: batch statistics and running-stat updates (as the module's .training).
        pe_bias: (heads*hd,) the folded pe conv's bias where pe_bn is None; None: no bias.

    Returns:
        (B, heads*hd, H, W) in qkv_raw's dtype and memory format.
    """
    C = num_heads * head_dim
    qkv_raw = dense_4d(qkv_raw)  # NCHW or channels_last: no copy (the kernels read strides)
    qa, qb = scale_shift(qkv_raw, qkv_bn, training)
    # pe's input is the normalised v (one elementwise op, in qkv's layout), then cuDNN's depthwise conv
    v_norm = psa_v_norm(qkv_raw, qa, qb, num_heads, key_dim, head_dim)
    pe_raw = F.conv2d(v_norm, pe_weight, pe_bias, padding=pe_weight.shape[-1] // 2, groups=C)
    pa, pb = scale_shift(pe_raw, pe_bn, training)
    return psa_attn(qkv_raw, qa, qb, pe_raw, pa, pb, num_heads, key_dim, head_dim)[0]
