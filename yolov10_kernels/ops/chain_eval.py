"""Eval-mode (BN folded) Triton kernels for YOLOv10's depthwise-separable chains.

Four kernels keep every intermediate of a chain on chip (registers, plus in dw_pw_dw one small per-program
scratch tile, reused by a persistent loop, so it stays in L1/L2):

- `dw_pw`     DW kxk (+SiLU) -> PW 1x1 (+SiLU)                         [CIB first half, cls head first half]
- `dw_pw_pw`  DW kxk (+SiLU) -> PW (+SiLU) -> PW (+bias, no act)        [cls head second half]
- `pw_dw`     PW 1x1 (+SiLU) -> DW kxk stride s (no act)                [SCDown]
- `dw_pw_dw`  DW kxk (+SiLU) -> PW (+SiLU) -> DW 3x3 (+SiLU) (+residual) [CIB second half]

A whole CIB block is 2 launches (dw_pw writes the one intermediate, 2c channels, channels_last; dw_pw_dw
reads it), the cls head 2 launches (dw_pw, dw_pw_pw), SCDown 1 launch.

Weights come pre-folded (`FoldedLayer`, built by yolov10_kernels/modules/chain.py) in kernel-friendly
layouts, fp32 (fp64 for fp64 inputs): depthwise weights as (k*k, C), pointwise weights transposed as
(K_in, N_out), biases as (C,).
Activations may be fp32/fp16/bf16 (fp64 for tests) in NCHW or channels_last; the accumulators are fp32
(fp64), the PW matmuls run on tensor cores in the activation dtype (fp32: TF32 where torch allows it, IEEE
otherwise; utils.dot_precision).
The eager composites (cib_infer, scdown_infer, cls_head_infer) call the implementations directly; traced and
compiled code goes through the registered ops.

The kernels, configs and prunes: chain_eval_kernels.py.

Each op is a torch.library custom_op with a fake (meta) implementation, so it works under torch.compile and
torch.export (as an opaque op). custom_op rather than triton_op: under TRITON_INTERPRET=1 (the CPU tests)
wrap_triton hands back the bare interpreted kernel, which then runs on FakeTensors during AOT tracing.
These ops have no autograd: training goes through chain_train.py, the train-mode half of the pair.
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch

from .utils import (check_device, conv_out_size, dot_precision, empty, empty_4d, is_channels_last, launch_tuned,
                    next_pow2, op_name, size_bucket, strides4, target_programs, triton, triton_interpreted)

if triton is not None:
    from .chain_eval_kernels import _SCRATCH_PER_PROGRAM, _dw_pw, _dw_pw_dw, _dw_pw_pw, _pw_dw


@dataclass
class FoldedLayer:
    """One conv of a chain with its eval-mode BN folded in, laid out as the kernels read it."""
    w: torch.Tensor  # depthwise: (k*k, C); pointwise: (C_in, C_out); both contiguous, fp32 (fp64)
    b: torch.Tensor  # (C_out,)
    act: bool  # SiLU after this layer
    stride: int = 1


@dataclass
class FoldedChain:
    layers: list
    residual: bool = False


INTERPRET_MAX_BLOCK = 256  # channel-block cap under TRITON_INTERPRET=1 (tests lower it to cover multi-block paths)


def _iblock(n, lo=16):
    return max(lo, min(next_pow2(n), INTERPRET_MAX_BLOCK))


# ----------------------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------------------
def _empty(x, c, h, w, channels_last):
    return empty_4d((x.shape[0], c, h, w), x, channels_last=channels_last)


def _ks(dw_w, what):
    ks = math.isqrt(dw_w.shape[0])
    if ks * ks != dw_w.shape[0] or ks % 2 == 0:
        raise ValueError(f"{what}: depthwise weights must be laid out as (k*k, C) with odd k, got {tuple(dw_w.shape)}")
    return ks


def _check(x, weights):
    """weights: {name: (tensor, expected shape)}."""
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) input, got shape {tuple(x.shape)}")
    check_device(x)
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"unsupported input dtype {x.dtype}")
    for name, (t, shape) in weights.items():
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, the input on {x.device}")
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name}: folded weights must be fp32 (fp64), got {t.dtype}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")


def _num_programs_cap(device):
    """The persistent grid's size: the device's program count (the interpreter's is 1, one program looping over
    every tile and reusing its scratch slot; the tests' gpus.emulate gives several)."""
    return target_programs(device)


# ---- DW -> PW ----
def _dw_pw_infer(x: torch.Tensor, dw_w: torch.Tensor, dw_b: torch.Tensor, pw_w: torch.Tensor, pw_b: torch.Tensor,
                act_dw: bool, act_pw: bool, channels_last: bool) -> torch.Tensor:
    """act(PW(act(DW(x)))) with folded weights: dw_w (k*k, C), dw_b (C,), pw_w (C, N), pw_b (N,)."""
    B, C, H, W = x.shape
    ks = _ks(dw_w, "dw_pw_infer")
    N = pw_w.shape[1]
    _check(x, {"dw_w": (dw_w, (ks * ks, C)), "dw_b": (dw_b, (C,)), "pw_w": (pw_w, (C, N)), "pw_b": (pw_b, (N,))})
    out = _empty(x, N, H, W, channels_last)
    npix = B * H * W
    if npix == 0 or N == 0:
        return out

    def grid(meta):
        return (triton.cdiv(npix, meta["BLOCK_P"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    launch_tuned(_dw_pw, grid, dict(BLOCK_P=min(64, _iblock(npix)), BLOCK_N=_iblock(N), BLOCK_K=_iblock(C)),
            (x, dw_w, dw_b, pw_w, pw_b, out, npix, size_bucket(H * W), H, W, C, N, *strides4(x), *strides4(out)),
            dict(KS=ks, ACT_DW=act_dw, ACT_PW=act_pw, DOT_PREC=dot_precision(x)))
    return out


dw_pw_infer = torch.library.custom_op(op_name("dw_pw_infer"), mutates_args=())(_dw_pw_infer)


@dw_pw_infer.register_fake
def _(x, dw_w, dw_b, pw_w, pw_b, act_dw, act_pw, channels_last):
    return _empty(x, pw_w.shape[1], x.shape[2], x.shape[3], channels_last)


# ---- DW -> PW -> PW ----
def _dw_pw_pw_infer(x: torch.Tensor, dw_w: torch.Tensor, dw_b: torch.Tensor, pw_w: torch.Tensor, pw_b: torch.Tensor,
                   pw2_w: torch.Tensor, pw2_b: torch.Tensor, act_dw: bool, act_pw: bool, act_pw2: bool,
                   channels_last: bool) -> torch.Tensor:
    """act(PW2(act(PW(act(DW(x)))))): pw_w (C, N1), pw2_w (N1, N2); the N1 hidden channels never leave the chip."""
    B, C, H, W = x.shape
    ks = _ks(dw_w, "dw_pw_pw_infer")
    N1, N2 = pw_w.shape[1], pw2_w.shape[1]
    _check(x, {"dw_w": (dw_w, (ks * ks, C)), "dw_b": (dw_b, (C,)), "pw_w": (pw_w, (C, N1)),
                   "pw_b": (pw_b, (N1,)), "pw2_w": (pw2_w, (N1, N2)), "pw2_b": (pw2_b, (N2,))})
    out = _empty(x, N2, H, W, channels_last)
    npix = B * H * W
    if npix == 0 or N2 == 0:
        return out
    n1p = next_pow2(N1, 16)

    def grid(meta):
        return (triton.cdiv(npix, meta["BLOCK_P"]),)

    launch_tuned(_dw_pw_pw, grid, dict(BLOCK_P=min(64, _iblock(npix)), BLOCK_K=_iblock(C), BLOCK_N2=_iblock(N2)),
            (x, dw_w, dw_b, pw_w, pw_b, pw2_w, pw2_b, out, npix, size_bucket(H * W), H, W, C, N1, N2, *strides4(x),
             *strides4(out)),
            dict(KS=ks, ACT_DW=act_dw, ACT_PW=act_pw, ACT_PW2=act_pw2, DOT_PREC=dot_precision(x), N1P=n1p))
    return out


dw_pw_pw_infer = torch.library.custom_op(op_name("dw_pw_pw_infer"), mutates_args=())(_dw_pw_pw_infer)


@dw_pw_pw_infer.register_fake
def _(x, dw_w, dw_b, pw_w, pw_b, pw2_w, pw2_b, act_dw, act_pw, act_pw2, channels_last):
    return _empty(x, pw2_w.shape[1], x.shape[2], x.shape[3], channels_last)


# ---- PW -> DW (stride s) ----
def _pw_dw_infer(x: torch.Tensor, pw_w: torch.Tensor, pw_b: torch.Tensor, dw_w: torch.Tensor, dw_b: torch.Tensor,
                stride: int, act_pw: bool, act_dw: bool, channels_last: bool) -> torch.Tensor:
    """act(DW_s(act(PW(x)))) (SCDown): pw_w (C, N), dw_w (k*k, N), DW stride s with padding k//2."""
    B, C, H, W = x.shape
    ks = _ks(dw_w, "pw_dw_infer")
    N = pw_w.shape[1]
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    _check(x, {"pw_w": (pw_w, (C, N)), "pw_b": (pw_b, (N,)), "dw_w": (dw_w, (ks * ks, N)), "dw_b": (dw_b, (N,))})
    HO, WO = conv_out_size(H, ks, stride), conv_out_size(W, ks, stride)
    out = _empty(x, N, HO, WO, channels_last)
    nq = B * HO * WO
    if nq == 0 or N == 0:
        return out

    def grid(meta):
        return (triton.cdiv(nq, meta["BLOCK_Q"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    launch_tuned(_pw_dw, grid, dict(BLOCK_Q=min(64, _iblock(nq)), BLOCK_N=_iblock(N), BLOCK_K=_iblock(C)),
            (x, pw_w, pw_b, dw_w, dw_b, out, nq, size_bucket(HO * WO), H, W, HO, WO, C, N, *strides4(x), *strides4(out)),
            dict(KS=ks, STRIDE=stride, ACT_PW=act_pw, ACT_DW=act_dw, DOT_PREC=dot_precision(x)))
    return out


pw_dw_infer = torch.library.custom_op(op_name("pw_dw_infer"), mutates_args=())(_pw_dw_infer)


@pw_dw_infer.register_fake
def _(x, pw_w, pw_b, dw_w, dw_b, stride, act_pw, act_dw, channels_last):
    ks = math.isqrt(dw_w.shape[0])
    return _empty(x, pw_w.shape[1], conv_out_size(x.shape[2], ks, stride), conv_out_size(x.shape[3], ks, stride),
                  channels_last)


# ---- DW -> PW -> DW (+ residual) ----
def _dw_pw_dw_infer(x: torch.Tensor, dw1_w: torch.Tensor, dw1_b: torch.Tensor, pw_w: torch.Tensor,
                   pw_b: torch.Tensor, dw2_w: torch.Tensor, dw2_b: torch.Tensor, residual: Optional[torch.Tensor],
                   act_dw1: bool, act_pw: bool, act_dw2: bool, channels_last: bool) -> torch.Tensor:
    """act(DW2(act(PW(act(DW1(x)))))) (+ residual): dw1_w (k1*k1, C), pw_w (C, N), dw2_w (k2*k2, N); all
    stride 1; residual (B, N, H, W) or None. Output dtype: x's."""
    B, C, H, W = x.shape
    ks1 = _ks(dw1_w, "dw_pw_dw_infer")
    ks2 = _ks(dw2_w, "dw_pw_dw_infer")
    if ks2 > 3:
        raise ValueError(f"dw_pw_dw_infer: the second depthwise conv must be 1x1 or 3x3 (its halo tile), got {ks2}x{ks2}")
    N = pw_w.shape[1]
    _check(x, {"dw1_w": (dw1_w, (ks1 * ks1, C)), "dw1_b": (dw1_b, (C,)), "pw_w": (pw_w, (C, N)),
                   "pw_b": (pw_b, (N,)), "dw2_w": (dw2_w, (ks2 * ks2, N)), "dw2_b": (dw2_b, (N,))})
    if residual is not None and (tuple(residual.shape) != (B, N, H, W) or residual.device != x.device):
        raise ValueError(f"residual must be ({B}, {N}, {H}, {W}) on {x.device}, got {tuple(residual.shape)}")
    out = _empty(x, N, H, W, channels_last)
    if B * H * W == 0 or N == 0:
        return out
    cap = _num_programs_cap(x.device)
    interp_meta = dict(BLOCK_E=64, MAX_EW=16, BLOCK_N=_iblock(N), BLOCK_K=_iblock(C))
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


dw_pw_dw_infer = torch.library.custom_op(op_name("dw_pw_dw_infer"), mutates_args=())(_dw_pw_dw_infer)


@dw_pw_dw_infer.register_fake
def _(x, dw1_w, dw1_b, pw_w, pw_b, dw2_w, dw2_b, residual, act_dw1, act_pw, act_dw2, channels_last):
    return _empty(x, pw_w.shape[1], x.shape[2], x.shape[3], channels_last)


# ----------------------------------------------------------------------------------------------------------
# whole blocks (composites of the ops above; `p` = a FoldedChain)
# ----------------------------------------------------------------------------------------------------------
def _plain_eager(x):
    """Plain eager call on a real tensor: the implementation can be called directly, skipping the ~10-20 us of
    custom-op dispatch (tracing, torch.compile, fake tensors and dispatch modes go through the registered op)."""
    return (type(x) is torch.Tensor and not torch.compiler.is_compiling()
            and torch._C._len_torch_dispatch_stack() == 0)


def cib_infer(x, p):
    """CIB in 2 launches. p = FoldedChain of 5 layers [DW, PW, DW(3x3 or folded 7x7), PW, DW] + residual flag.
    The one intermediate (after layer 2, 2c channels) is channels_last."""
    l1, l2, l3, l4, l5 = p.layers
    fast = _plain_eager(x)
    t = (_dw_pw_infer if fast else dw_pw_infer)(x, l1.w, l1.b, l2.w, l2.b, l1.act, l2.act, True)
    return (_dw_pw_dw_infer if fast else dw_pw_dw_infer)(t, l3.w, l3.b, l4.w, l4.b, l5.w, l5.b,
                                                         x if p.residual else None, l3.act, l4.act, l5.act,
                                                         is_channels_last(x))


def scdown_infer(x, p):
    """SCDown in 1 launch. p.layers = [PW, DW stride s]."""
    l1, l2 = p.layers
    return (_pw_dw_infer if _plain_eager(x) else pw_dw_infer)(x, l1.w, l1.b, l2.w, l2.b, l2.stride, l1.act, l2.act,
                                                               is_channels_last(x))


def cls_head_infer(x, p):
    """v10Detect light cls branch in 2 launches. p.layers = [DW, PW, DW, PW, PW(1x1 conv, bias)]."""
    l1, l2, l3, l4, l5 = p.layers
    fast = _plain_eager(x)
    t = (_dw_pw_infer if fast else dw_pw_infer)(x, l1.w, l1.b, l2.w, l2.b, l1.act, l2.act, True)
    return (_dw_pw_pw_infer if fast else dw_pw_pw_infer)(t, l3.w, l3.b, l4.w, l4.b, l5.w, l5.b, l3.act, l4.act,
                                                         l5.act, is_channels_last(x))
