"""The op `dw_pw_infer`: eval-mode DW -> PW, the first half of an eval CIB and of a light cls branch,
as one kernel with the BNs folded.
Its kernel and configs: chain_eval_kernels.py; the folded chains and shared checks: folded.py."""
import torch

from .folded import check_folded, empty_out, interp_block, kernel_size
from .utils import dot_precision, launch_tuned, op_name, size_bucket, strides4, triton

if triton is not None:
    from .chain_eval_kernels import _dw_pw


def _dw_pw_infer(x: torch.Tensor, dw_w: torch.Tensor, dw_b: torch.Tensor, pw_w: torch.Tensor, pw_b: torch.Tensor,
                act_dw: bool, act_pw: bool, channels_last: bool) -> torch.Tensor:
    """act(PW(act(DW(x)))) with folded weights (the implementation of dw_pw_infer, which documents it)."""
    B, C, H, W = x.shape
    ks = kernel_size(dw_w, "dw_pw_infer")
    N = pw_w.shape[1]
    check_folded(x, {"dw_w": (dw_w, (ks * ks, C)), "dw_b": (dw_b, (C,)), "pw_w": (pw_w, (C, N)), "pw_b": (pw_b, (N,))})
    out = empty_out(x, N, H, W, channels_last)
    npix = B * H * W
    if npix == 0 or N == 0:
        return out

    def grid(meta):
        return (triton.cdiv(npix, meta["BLOCK_P"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    iblocks = dict(BLOCK_P=min(64, interp_block(npix)), BLOCK_N=interp_block(N), BLOCK_K=interp_block(C))
    launch_tuned(_dw_pw, grid, iblocks,
            (x, dw_w, dw_b, pw_w, pw_b, out, npix, size_bucket(H * W), H, W, C, N, *strides4(x), *strides4(out)),
            dict(KS=ks, ACT_DW=act_dw, ACT_PW=act_pw, DOT_PREC=dot_precision(x)))
    return out


@torch.library.custom_op(op_name("dw_pw_infer"), mutates_args=())
def dw_pw_infer(x: torch.Tensor, dw_w: torch.Tensor, dw_b: torch.Tensor, pw_w: torch.Tensor, pw_b: torch.Tensor,
                act_dw: bool, act_pw: bool, channels_last: bool) -> torch.Tensor:
    """out = act_pw(PW(act_dw(DW(x)))): a depthwise kxk conv (stride 1, padding k // 2) then a pointwise conv,
    eval mode with the BNs folded into the weights, the DW output kept on chip (CIB and cls-head first half). The
    registered op (opaque to torch.compile, with a fake; no autograd), which traced and compiled code calls; the
    eager composites call _dw_pw_infer, skipping the dispatcher (microseconds a launch at batch 1).

    Arguments:
        x: (B, C, H, W), fp32/fp16/bf16/fp64, any strides (NCHW or channels_last); on a CUDA device, or on the CPU
            only under TRITON_INTERPRET=1.
        dw_w: (k*k, C), k odd, the folded depthwise weight; fp32 (fp64 for fp64 x), contiguous, x's device.
        dw_b: (C,) the folded DW bias; pw_w: (C, N) the folded pointwise weight, transposed (C_in, C_out);
            pw_b: (N,); all fp32 (fp64 for fp64 x), contiguous, on x's device.
        act_dw, act_pw: SiLU (True) or identity (False) after the DW / the PW conv.
        channels_last: the output's memory format (True: channels_last, False: NCHW).

    Returns:
        out: (B, N, H, W) in x's dtype, in the memory format `channels_last` asks for.

    Raises:
        ValueError: x not 4-D (B, C, H, W); dw_w not (k*k, C) with odd k; a weight or bias not of its expected shape,
            not on x's device or not contiguous.
        TypeError: x not fp32/fp16/bf16/fp64; a weight or bias not fp32/fp64.
        RuntimeError: Triton cannot be imported; a CPU x without TRITON_INTERPRET=1, a CUDA x with it, or another
            device type (utils.check_device).
    """
    return _dw_pw_infer(x, dw_w, dw_b, pw_w, pw_b, act_dw, act_pw, channels_last)


@dw_pw_infer.register_fake
def _(x, dw_w, dw_b, pw_w, pw_b, act_dw, act_pw, channels_last):
    return empty_out(x, pw_w.shape[1], x.shape[2], x.shape[3], channels_last)
