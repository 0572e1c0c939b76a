"""The folded chains the eval-mode ops run (FoldedLayer, FoldedChain: built by yolov10_kernels/modules/chain.py)
and what their four ops (dw_pw_infer.py, dw_pw_pw_infer.py, pw_dw_infer.py, dw_pw_dw_infer.py) share: input
checks, output allocation, the interpreter's block sizes and the persistent grid's size."""
import math
from dataclasses import dataclass

import torch

from .utils import check_device, empty_4d, next_pow2, target_programs


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


def interp_block(n, lo=16):
    return max(lo, min(next_pow2(n), INTERPRET_MAX_BLOCK))


def empty_out(x, c, h, w, channels_last):
    """The (B, c, h, w) output of a chain op, channels_last or NCHW."""
    return empty_4d((x.shape[0], c, h, w), x, channels_last=channels_last)


def kernel_size(dw_w, what):
    """k of depthwise weights laid out as (k*k, C), k odd."""
    ks = math.isqrt(dw_w.shape[0])
    if ks * ks != dw_w.shape[0] or ks % 2 == 0:
        raise ValueError(f"{what}: depthwise weights must be laid out as (k*k, C) with odd k, got {tuple(dw_w.shape)}")
    return ks


def check_folded(x, weights):
    """The input x and the folded weights, {name: (tensor, expected shape)}: clear errors."""
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


def programs_cap(device):
    """The persistent grid's size: the device's program count (the interpreter's is 1, one program looping over
    every tile and reusing its scratch slot; the tests' gpus.emulate gives several)."""
    return target_programs(device)
