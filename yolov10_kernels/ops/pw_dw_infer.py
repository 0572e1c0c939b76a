"""The op `pw_dw_infer`: eval-mode PW -> DW (stride s), SCDown, as one kernel with the BNs folded.
Its kernel and configs: chain_eval_kernels.py; the folded chains and shared checks: folded.py."""
import math

import torch

from .folded import check_folded, empty_out, interp_block, kernel_size
from .utils import conv_out_size, dot_precision, launch_tuned, op_name, size_bucket, strides4, triton

if triton is not None:
    from .chain_eval_kernels import _pw_dw


def _pw_dw_infer(x: torch.Tensor, pw_w: torch.Tensor, pw_b: torch.Tensor, dw_w: torch.Tensor, dw_b: torch.Tensor,
                stride: int, act_pw: bool, act_dw: bool, channels_last: bool) -> torch.Tensor:
    """act(DW_s(act(PW(x)))) (SCDown), folded weights (the implementation of pw_dw_infer, which documents it)."""
    B, C, H, W = x.shape
    ks = kernel_size(dw_w, "pw_dw_infer")
    N = pw_w.shape[1]
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    check_folded(x, {"pw_w": (pw_w, (C, N)), "pw_b": (pw_b, (N,)), "dw_w": (dw_w, (ks * ks, N)), "dw_b": (dw_b, (N,))})
    HO, WO = conv_out_size(H, ks, stride), conv_out_size(W, ks, stride)
    out = empty_out(x, N, HO, WO, channels_last)
    nq = B * HO * WO
    if nq == 0 or N == 0:
        return out

    def grid(meta):
        return (triton.cdiv(nq, meta["BLOCK_Q"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    iblocks = dict(BLOCK_Q=min(64, interp_block(nq)), BLOCK_N=interp_block(N), BLOCK_K=interp_block(C))
    launch_tuned(_pw_dw, grid, iblocks,
            (x, pw_w, pw_b, dw_w, dw_b, out, nq, size_bucket(HO * WO), H, W, HO, WO, C, N, *strides4(x),
             *strides4(out)),
            dict(KS=ks, STRIDE=stride, ACT_PW=act_pw, ACT_DW=act_dw, DOT_PREC=dot_precision(x)))
    return out


@torch.library.custom_op(op_name("pw_dw_infer"), mutates_args=())
def pw_dw_infer(x: torch.Tensor, pw_w: torch.Tensor, pw_b: torch.Tensor, dw_w: torch.Tensor, dw_b: torch.Tensor,
                stride: int, act_pw: bool, act_dw: bool, channels_last: bool) -> torch.Tensor:
    """out = act_dw(DW_s(act_pw(PW(x)))) (SCDown): a pointwise conv then a depthwise kxk conv with stride s and
    padding k // 2, eval mode with the BNs folded into the weights, the PW output kept on chip. The registered op
    (opaque to torch.compile, with a fake; no autograd), which traced and compiled code calls; the eager
    composites call _pw_dw_infer, skipping the dispatcher (microseconds a launch at batch 1).

    Arguments:
        x: (B, C, H, W), fp32/fp16/bf16/fp64, any strides (NCHW or channels_last); on a CUDA device, or on the CPU
            only under TRITON_INTERPRET=1.
        pw_w: (C, N) the folded pointwise weight, transposed (C_in, C_out); pw_b: (N,).
        dw_w: (k*k, N), k odd, the folded depthwise weight; dw_b: (N,). All fp32 (fp64 for fp64 x), contiguous,
            on x's device.
        stride: the DW stride s >= 1; HO = (H - 1) // s + 1 (likewise WO).
        act_pw, act_dw: SiLU (True) or identity (False) after the PW / the DW conv.
        channels_last: the output's memory format (True: channels_last, False: NCHW).

    Returns:
        out: (B, N, HO, WO) in x's dtype, in the memory format `channels_last` asks for.

    Raises:
        ValueError: x not 4-D (B, C, H, W); dw_w not (k*k, N) with odd k; stride < 1; a weight or bias not of its
            expected shape, not on x's device or not contiguous.
        TypeError: x not fp32/fp16/bf16/fp64; a weight or bias not fp32/fp64.
        RuntimeError: Triton cannot be imported; a CPU x without TRITON_INTERPRET=1, a CUDA x with it, or another
            device type (utils.check_device).
    """
    return _pw_dw_infer(x, pw_w, pw_b, dw_w, dw_b, stride, act_pw, act_dw, channels_last)


@pw_dw_infer.register_fake
def _(x, pw_w, pw_b, dw_w, dw_b, stride, act_pw, act_dw, channels_last):
    ks = math.isqrt(dw_w.shape[0])
    return empty_out(x, pw_w.shape[1], conv_out_size(x.shape[2], ks, stride), conv_out_size(x.shape[3], ks, stride),
                  channels_last)
