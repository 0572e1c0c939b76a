"""The op `dw_pw_pw_infer`: eval-mode DW -> PW -> PW, the second half of a light cls branch,
as one kernel with the BNs folded.
Its kernel and configs: chain_eval_kernels.py; the folded chains and shared checks: folded.py."""
import torch

from .folded import check_folded, empty_out, interp_block, kernel_size
from .utils import dot_precision, launch_tuned, next_pow2, op_name, size_bucket, strides4, triton

if triton is not None:
    from .chain_eval_kernels import _dw_pw_pw


def _dw_pw_pw_infer(x: torch.Tensor, dw_w: torch.Tensor, dw_b: torch.Tensor, pw_w: torch.Tensor, pw_b: torch.Tensor,
                   pw2_w: torch.Tensor, pw2_b: torch.Tensor, act_dw: bool, act_pw: bool, act_pw2: bool,
                   channels_last: bool) -> torch.Tensor:
    """act(PW2(act(PW(act(DW(x)))))), folded weights (the implementation of dw_pw_pw_infer, which documents it)."""
    B, C, H, W = x.shape
    ks = kernel_size(dw_w, "dw_pw_pw_infer")
    N1, N2 = pw_w.shape[1], pw2_w.shape[1]
    check_folded(x, {"dw_w": (dw_w, (ks * ks, C)), "dw_b": (dw_b, (C,)), "pw_w": (pw_w, (C, N1)),
                   "pw_b": (pw_b, (N1,)), "pw2_w": (pw2_w, (N1, N2)), "pw2_b": (pw2_b, (N2,))})
    out = empty_out(x, N2, H, W, channels_last)
    npix = B * H * W
    if npix == 0 or N2 == 0:
        return out
    n1p = next_pow2(N1, 16)

    def grid(meta):
        return (triton.cdiv(npix, meta["BLOCK_P"]),)

    iblocks = dict(BLOCK_P=min(64, interp_block(npix)), BLOCK_K=interp_block(C), BLOCK_N2=interp_block(N2))
    launch_tuned(_dw_pw_pw, grid, iblocks,
            (x, dw_w, dw_b, pw_w, pw_b, pw2_w, pw2_b, out, npix, size_bucket(H * W), H, W, C, N1, N2, *strides4(x),
             *strides4(out)),
            dict(KS=ks, ACT_DW=act_dw, ACT_PW=act_pw, ACT_PW2=act_pw2, DOT_PREC=dot_precision(x), N1P=n1p))
    return out


@torch.library.custom_op(op_name("dw_pw_pw_infer"), mutates_args=())
def dw_pw_pw_infer(x: torch.Tensor, dw_w: torch.Tensor, dw_b: torch.Tensor, pw_w: torch.Tensor, pw_b: torch.Tensor,
                   pw2_w: torch.Tensor, pw2_b: torch.Tensor, act_dw: bool, act_pw: bool, act_pw2: bool,
                   channels_last: bool) -> torch.Tensor:
    """out = act_pw2(PW2(act_pw(PW(act_dw(DW(x)))))): a depthwise kxk conv (stride 1, padding k // 2) and two
    pointwise convs, eval mode with the BNs folded into the weights; the N1 hidden channels never leave the chip
    (cls-head second half). The registered op (opaque to torch.compile, with a fake; no autograd), which traced and
    compiled code calls; the eager composites call _dw_pw_pw_infer, skipping the dispatcher (microseconds a launch
    at batch 1).

    Arguments:
        x: (B, C, H, W), fp32/fp16/bf16/fp64, any strides (NCHW or channels_last); on a CUDA device, or on the CPU
            only under TRITON_INTERPRET=1.
        dw_w: (k*k, C), k odd, the folded depthwise weight; dw_b: (C,).
        pw_w: (C, N1) the first folded pointwise weight, transposed (C_in, C_out); pw_b: (N1,).
        pw2_w: (N1, N2) the second, transposed; pw2_b: (N2,). All weights and biases fp32 (fp64 for fp64 x),
            contiguous, on x's device.
        act_dw, act_pw, act_pw2: SiLU (True) or identity (False) after each conv (the cls head: no act on PW2).
        channels_last: the output's memory format (True: channels_last, False: NCHW).

    Returns:
        out: (B, N2, H, W) in x's dtype, in the memory format `channels_last` asks for.

    Raises:
        ValueError: x not 4-D (B, C, H, W); dw_w not (k*k, C) with odd k; a weight or bias not of its expected shape,
            not on x's device or not contiguous.
        TypeError: x not fp32/fp16/bf16/fp64; a weight or bias not fp32/fp64.
        RuntimeError: Triton cannot be imported; a CPU x without TRITON_INTERPRET=1, a CUDA x with it, or another
            device type (utils.check_device).
    """
    return _dw_pw_pw_infer(x, dw_w, dw_b, pw_w, pw_b, pw2_w, pw2_b, act_dw, act_pw, act_pw2, channels_last)


@dw_pw_pw_infer.register_fake
def _(x, dw_w, dw_b, pw_w, pw_b, pw2_w, pw2_b, act_dw, act_pw, act_pw2, channels_last):
    return empty_out(x, pw2_w.shape[1], x.shape[2], x.shape[3], channels_last)
