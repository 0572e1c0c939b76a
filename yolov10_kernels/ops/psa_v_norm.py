"""psa_v_norm: BN_qkv(v), the v channels of PSA's raw qkv conv output with their BN affine applied (the input
of the pe depthwise conv, which cuDNN runs), and its backward; one elementwise Triton kernel each way."""
import torch

from .utils import (acc_dtype, check_device, dense_4d, empty, empty_4d, next_pow2, on_device, op_name, poison,
                    sum_partials, tl, tl_acc, token_strides, triton, triton_interpreted)

if triton is not None:
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


def _v_norm_grid(qkv):
    """(grid, token blocks, meta-parameters) of _v_norm_kernel over qkv."""
    B, CQ, Hh, Ww = qkv.shape
    bn, bc = (64, min(next_pow2(CQ), 256)) if triton_interpreted() else (64, 64)
    nblk = triton.cdiv(Hh * Ww, bn)
    return (triton.cdiv(CQ, bc), B * nblk), nblk, dict(ACC=tl_acc(qkv.dtype), BLOCK_N=bn, BLOCK_C=bc, num_warps=4)


def _v_norm_forward(qkv, qa, qb, num_heads, key_dim, head_dim):
    B, CQ, Hh, Ww = qkv.shape
    out = empty_4d((B, num_heads * head_dim, Hh, Ww), qkv)
    if B * Hh * Ww:
        grid, nblk, meta = _v_norm_grid(qkv)
        with on_device(qkv):  # unused pointers (gout, dqkv, pga, pgb): any tensor
            _v_norm_kernel[grid](qkv, qa, qb, out, out, qkv, qa, qa, Hh * Ww, nblk, CQ, *token_strides(qkv),
                                 *token_strides(out), KD=key_dim, HD=head_dim, BACKWARD=False, **meta)
    return out


def _v_norm_backward(gout, qkv, qa, num_heads, key_dim, head_dim):
    """(dqkv, dqa, dqb): the shift's gradient needs no shift, so the kernel's qb pointer is a dummy (qa)."""
    B, CQ, Hh, Ww = qkv.shape
    if B * Hh * Ww == 0:
        return torch.zeros_like(qkv), torch.zeros_like(qa), torch.zeros_like(qa)
    grid, nblk, meta = _v_norm_grid(qkv)
    gout = dense_4d(gout)
    dqkv = poison(torch.empty_like(qkv))
    sd = acc_dtype(qkv)
    pga, pgb = empty((B * nblk, CQ), qkv, sd), empty((B * nblk, CQ), qkv, sd)
    with on_device(qkv):
        _v_norm_kernel[grid](qkv, qa, qa, gout, gout, dqkv, pga, pgb, Hh * Ww, nblk, CQ, *token_strides(qkv),
                             *token_strides(gout), KD=key_dim, HD=head_dim, BACKWARD=True, **meta)
        return dqkv, sum_partials(pga, torch.empty_like(qa)), sum_partials(pgb, torch.empty_like(qa))


def _check(qkv, qkv_scale, qkv_shift, num_heads, key_dim, head_dim):
    check_device(qkv)
    CQ = num_heads * (2 * key_dim + head_dim)
    if qkv.dim() != 4 or qkv.shape[1] != CQ:
        raise ValueError(f"qkv must be (B, num_heads * (2 key_dim + head_dim) = {CQ}, H, W), got {tuple(qkv.shape)}")
    if qkv_scale.numel() != CQ or qkv_shift.numel() != CQ:
        raise ValueError(f"qkv_scale and qkv_shift need one value per qkv channel ({CQ}), got "
                         f"{qkv_scale.numel()} and {qkv_shift.numel()}")


@torch.library.custom_op(op_name("psa_v_norm"), mutates_args=())
def psa_v_norm(qkv: torch.Tensor, qkv_scale: torch.Tensor, qkv_shift: torch.Tensor, num_heads: int, key_dim: int,
               head_dim: int) -> torch.Tensor:
    """BN_qkv(v) (B, heads * hd, H, W) in qkv's dtype and layout: the v channels of the raw qkv with their BN
    affine applied (the pe conv's input): out = v * qkv_scale + qkv_shift on each head's v channels. One
    elementwise kernel; differentiable (register_autograd) in qkv and qkv_scale / qkv_shift.

    Arguments:
        qkv: (B, heads*(2kd+hd), H, W), the raw qkv conv output, per head [q (kd) | k (kd) | v (hd)] channels;
            fp32/fp16/bf16/fp64, NCHW or channels_last (else copied to NCHW); on a CUDA device, or on the CPU only
            under TRITON_INTERPRET=1.
        qkv_scale, qkv_shift: (heads*(2kd+hd),) BN_qkv's per-channel affine (only the v channels are read), the
            accumulation dtype (fp32, fp64 for fp64 inputs), qkv's device.
        num_heads, key_dim (kd), head_dim (hd): the head count and the per-head q/k and v widths.

    Returns:
        out: (B, heads*hd, H, W) in qkv's dtype, channels_last when qkv is (else NCHW).

    Raises:
        RuntimeError: Triton cannot be imported; a CPU qkv without TRITON_INTERPRET=1, a CUDA qkv with it, or
            another device type (utils.check_device).
        ValueError: qkv is not 4-D with heads*(2kd+hd) channels, or a vector has not one value per channel.
    """
    _check(qkv, qkv_scale, qkv_shift, num_heads, key_dim, head_dim)
    qkv = dense_4d(qkv)
    return _v_norm_forward(qkv, qkv_scale.contiguous(), qkv_shift.contiguous(), num_heads, key_dim, head_dim)


@psa_v_norm.register_fake
def _(qkv, qkv_scale, qkv_shift, num_heads, key_dim, head_dim):
    return empty_4d((qkv.shape[0], num_heads * head_dim, *qkv.shape[2:]), dense_4d(qkv))


@torch.library.custom_op(op_name("psa_v_norm_backward"), mutates_args=())
def psa_v_norm_backward(grad: torch.Tensor, qkv: torch.Tensor, qkv_scale: torch.Tensor, num_heads: int,
                        key_dim: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad qkv (0 on q / k channels), grad qkv_scale, grad qkv_shift (0 off the v channels)) of psa_v_norm:
    grad qkv = grad * qkv_scale on v channels, grad qkv_scale = sum grad * v, grad qkv_shift = sum grad (sums over
    B, H, W, from per-block partials).

    Arguments:
        grad: (B, heads*hd, H, W), the gradient of psa_v_norm's output, qkv's device (copied to NCHW unless dense).
        qkv: (B, heads*(2kd+hd), H, W), the forward's input, fp32/fp16/bf16/fp64; on a CUDA device, or on the CPU
            only under TRITON_INTERPRET=1.
        qkv_scale: (heads*(2kd+hd),) the forward's scale, the accumulation dtype (fp32, fp64 for fp64 inputs).
        num_heads, key_dim, head_dim: the forward's.

    Returns:
        grad qkv: qkv's shape and dtype, with qkv's strides (NCHW or channels_last).
        grad qkv_scale, grad qkv_shift: (heads*(2kd+hd),) both in qkv_scale's dtype; 0 off the v channels.

    Raises:
        RuntimeError, ValueError: as psa_v_norm, for qkv and qkv_scale.
    """
    _check(qkv, qkv_scale, qkv_scale, num_heads, key_dim, head_dim)
    qkv = dense_4d(qkv)
    return _v_norm_backward(grad, qkv, qkv_scale.contiguous(), num_heads, key_dim, head_dim)


@psa_v_norm_backward.register_fake
def _(grad, qkv, qkv_scale, num_heads, key_dim, head_dim):
    return torch.empty_like(dense_4d(qkv)), torch.empty_like(qkv_scale), torch.empty_like(qkv_scale)


def _psa_v_norm_setup_context(ctx, inputs, output):
    qkv, qa, _, num_heads, key_dim, head_dim = inputs
    ctx.save_for_backward(qkv, qa)
    ctx.dims = (num_heads, key_dim, head_dim)


def _psa_v_norm_autograd(ctx, grad):
    qkv, qa = ctx.saved_tensors
    return (*psa_v_norm_backward(grad, qkv, qa, *ctx.dims), None, None, None)


psa_v_norm.register_autograd(_psa_v_norm_autograd, setup_context=_psa_v_norm_setup_context)
