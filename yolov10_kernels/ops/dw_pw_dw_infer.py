"""The op `dw_pw_dw_infer`: eval-mode DW -> PW -> DW (+ residual), the second half of an eval CIB,
as one kernel with the BNs folded.
Its kernel and configs: chain_eval_kernels.py; the folded chains and shared checks: folded.py."""
from typing import Optional

import torch

from .folded import check_folded, empty_out, interp_block, kernel_size, programs_cap
from .utils import dot_precision, empty, launch_tuned, op_name, size_bucket, strides4, triton, triton_interpreted

if triton is not None:
    from .chain_eval_kernels import _SCRATCH_PER_PROGRAM, _dw_pw_dw


def _dw_pw_dw_infer(x: torch.Tensor, dw1_w: torch.Tensor, dw1_b: torch.Tensor, pw_w: torch.Tensor,
                   pw_b: torch.Tensor, dw2_w: torch.Tensor, dw2_b: torch.Tensor, residual: Optional[torch.Tensor],
                   act_dw1: bool, act_pw: bool, act_dw2: bool, channels_last: bool) -> torch.Tensor:
    """act(DW2(act(PW(act(DW1(x)))))) (+ residual), folded weights (implements dw_pw_dw_infer, which documents it)."""
    B, C, H, W = x.shape
    ks1 = kernel_size(dw1_w, "dw_pw_dw_infer")
    ks2 = kernel_size(dw2_w, "dw_pw_dw_infer")
    if ks2 > 3:
        raise ValueError(f"dw_pw_dw_infer: the second depthwise conv must be 1x1 or 3x3 (its halo tile), "
                         f"got {ks2}x{ks2}")
    N = pw_w.shape[1]
    check_folded(x, {"dw1_w": (dw1_w, (ks1 * ks1, C)), "dw1_b": (dw1_b, (C,)), "pw_w": (pw_w, (C, N)),
                   "pw_b": (pw_b, (N,)), "dw2_w": (dw2_w, (ks2 * ks2, N)), "dw2_b": (dw2_b, (N,))})
    if residual is not None and (tuple(residual.shape) != (B, N, H, W) or residual.device != x.device):
        raise ValueError(f"residual must be ({B}, {N}, {H}, {W}) on {x.device}, got {tuple(residual.shape)}")
    out = empty_out(x, N, H, W, channels_last)
    if B * H * W == 0 or N == 0:
        return out
    cap = programs_cap(x.device)
    interp_meta = dict(BLOCK_E=64, MAX_EW=16, BLOCK_N=interp_block(N), BLOCK_K=interp_block(C))
    per_program = interp_meta["BLOCK_E"] * interp_meta["BLOCK_N"] if triton_interpreted() else _SCRATCH_PER_PROGRAM
    scratch = empty(cap * per_program, x)

    def grid(meta):
        ew = min(W + 2 * (ks2 // 2), meta["MAX_EW"])
        eh = meta["BLOCK_E"] // ew
        th, tw = eh - 2 * (ks2 // 2), ew - 2 * (ks2 // 2)
        work = B * triton.cdiv(H, th) * triton.cdiv(W, tw) * triton.cdiv(N, meta["BLOCK_N"])
        return (min(work, cap),)

    res = residual if residual is not None else out
    launch_tuned(_dw_pw_dw, grid, interp_meta,
            (x, dw1_w, dw1_b, pw_w, pw_b, dw2_w, dw2_b, res, out, scratch, B, size_bucket(H * W), H, W, C, N,
             *strides4(x), *strides4(res), *strides4(out)),
            dict(KS1=ks1, KS2=ks2, ACT1=act_dw1, ACT_PW=act_pw, ACT2=act_dw2, HAS_RES=residual is not None,
                 DOT_PREC=dot_precision(x)))
    return out


@torch.library.custom_op(op_name("dw_pw_dw_infer"), mutates_args=())
def dw_pw_dw_infer(x: torch.Tensor, dw1_w: torch.Tensor, dw1_b: torch.Tensor, pw_w: torch.Tensor,
                   pw_b: torch.Tensor, dw2_w: torch.Tensor, dw2_b: torch.Tensor, residual: Optional[torch.Tensor],
                   act_dw1: bool, act_pw: bool, act_dw2: bool, channels_last: bool) -> torch.Tensor:
    """out = act_dw2(DW2(act_pw(PW(act_dw1(DW1(x)))))) (+ residual): depthwise k1 x k1, pointwise, depthwise 1x1
    or 3x3, all stride 1 with padding k // 2, eval mode with the BNs folded into the weights; the intermediates stay
    on chip (one small per-program scratch tile, reused by a persistent loop) (CIB second half). The registered op
    (opaque to torch.compile, with a fake; no autograd), which traced and compiled code calls; the eager composites
    call _dw_pw_dw_infer, skipping the dispatcher (microseconds a launch at batch 1).

    Arguments:
        x: (B, C, H, W), fp32/fp16/bf16/fp64, any strides (NCHW or channels_last); on a CUDA device, or on the CPU
            only under TRITON_INTERPRET=1.
        dw1_w: (k1*k1, C), k1 odd, the first folded depthwise weight; dw1_b: (C,).
        pw_w: (C, N) the folded pointwise weight, transposed (C_in, C_out); pw_b: (N,).
        dw2_w: (k2*k2, N), k2 in 1, 3; dw2_b: (N,). All weights and biases fp32 (fp64 for fp64 x), contiguous,
            on x's device.
        residual: (B, N, H, W) added after the last act, a float dtype, x's device, any strides; None: no residual.
        act_dw1, act_pw, act_dw2: SiLU (True) or identity (False) after each conv.
        channels_last: the output's memory format (True: channels_last, False: NCHW).

    Returns:
        out: (B, N, H, W) in x's dtype, in the memory format `channels_last` asks for.

    Raises:
        ValueError: x not 4-D (B, C, H, W); dw1_w / dw2_w not (k*k, C) / (k*k, N) with odd k; k2 > 3; a weight or bias
            not of its expected shape, not on x's device or not contiguous; residual not (B, N, H, W) or not on x's
            device.
        TypeError: x not fp32/fp16/bf16/fp64; a weight or bias not fp32/fp64.
        RuntimeError: Triton cannot be imported; a CPU x without TRITON_INTERPRET=1, a CUDA x with it, or another
            device type (utils.check_device).
    """
    return _dw_pw_dw_infer(x, dw1_w, dw1_b, pw_w, pw_b, dw2_w,
                           dw2_b, residual, act_dw1, act_pw, act_dw2, channels_last)


@dw_pw_dw_infer.register_fake
def _(x, dw1_w, dw1_b, pw_w, pw_b, dw2_w, dw2_b, residual, act_dw1, act_pw, act_dw2, channels_last):
    return empty_out(x, pw_w.shape[1], x.shape[2], x.shape[3], channels_last)
