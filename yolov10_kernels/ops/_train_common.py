"""Helpers shared by the training-path conv ops (dwconv.py, pwconv.py, conv_chain.py): input checks,
memory-format handling, launch sizes, SiLU in Triton, and the parallel-variance merge of partial statistics."""
import functools
import math

import torch
import triton
import triton.language as tl

from ..backend import triton_interpreted as interpreted
from ._alloc import is_fake as _is_fake
from ._alloc import poison

LIB = "yolov10_kernels"


# ----------------------------------------------------------------------------------------------- checks
def check_tensor(name, t, device=None, dim=None):
    """Validate one kernel input; messages name the argument and what is wrong with it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor (float32, float16, bfloat16 or float64), got {t.dtype}")
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"{name} has unsupported dtype {t.dtype}; use float32, float16, bfloat16 or float64")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the input is on {device}: all tensors must be on one device")


def check_device(x):
    """Triton runs on CUDA tensors, or on CPU tensors through the interpreter (TRITON_INTERPRET=1)."""
    if x.device.type == "meta" or _is_fake(x):
        return
    if x.device.type == "cuda":
        if interpreted():
            raise RuntimeError("TRITON_INTERPRET=1 runs Triton kernels on CPU tensors only; got a CUDA tensor")
        return
    if x.device.type == "cpu":
        if not interpreted():
            raise RuntimeError("yolov10_kernels Triton ops got a CPU tensor but TRITON_INTERPRET is not set: the "
                               "kernels run on CUDA tensors, or on the CPU only through the Triton interpreter "
                               "(set TRITON_INTERPRET=1 before importing triton; slow, for testing)")
        return
    raise RuntimeError(f"yolov10_kernels Triton ops do not support {x.device.type} tensors")


# ------------------------------------------------------------------------------------------ memory format
def is_channels_last(x):
    """True when x should be treated as NHWC: channels_last-contiguous and not plain contiguous (a tensor that is
    both, e.g. C == 1 or H == W == 1, counts as NCHW). The fake implementations use the same rule."""
    return x.dim() == 4 and (not x.is_contiguous()) and x.is_contiguous(memory_format=torch.channels_last)


def as_supported_layout(x):
    """x unchanged if it is NCHW- or channels_last-contiguous, else a contiguous (NCHW) copy."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def same_layout(t, like):
    """t in the memory format `like` has (a copy only when it differs)."""
    fmt = torch.channels_last if is_channels_last(like) else torch.contiguous_format
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)


def empty_4d(shape, like, dtype=None):
    fmt = torch.channels_last if is_channels_last(like) else torch.contiguous_format
    return poison(torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt))


def empty(shape, like, dtype):
    return poison(torch.empty(shape, dtype=dtype, device=like.device))


def partial_stats(programs, channels, like, dtype, stats):
    """Per-program (count, mean, M2) buffers of the statistics epilogue; 1-element dummies without it."""
    if not stats:
        dummy = like.new_empty(1, dtype=dtype)
        return dummy, dummy, dummy
    return empty(programs, like, dtype), empty((programs, channels), like, dtype), empty((programs, channels), like, dtype)


def stat_dtype(x):
    """Statistics, partial sums and weight gradients are fp32 (fp64 for fp64 inputs)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def tl_acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


# ------------------------------------------------------------------------------------------ launch sizes
def next_pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def target_programs(device):
    """About how many programs fill the device (interpreter: few, since each costs Python time)."""
    if device.type != "cuda":
        return 1  # the interpreter runs programs one after another: one program per channel block
    return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def split_tiles(num_tiles, other_programs, device):
    """Split num_tiles tiles over programs, `other_programs` being the grid's other extent.
    Returns (splits, tiles_per_split) with splits * tiles_per_split >= num_tiles."""
    want = max(1, math.ceil(target_programs(device) / max(1, other_programs)))
    splits = max(1, min(num_tiles, want))
    per = math.ceil(num_tiles / splits)
    return math.ceil(num_tiles / per), per


# ------------------------------------------------------------------------------------------ statistics
def merge_stats(cnt, mean, m2):
    """Merge per-program partials (count [P], mean [P, C], M2 [P, C]) with the parallel-variance formula
    (Chan et al.): mean = sum n_p m_p / n; M2 = sum M2_p + sum n_p (m_p - mean)^2. Returns (mean, biased var)."""
    cnt = cnt.to(mean.dtype).unsqueeze(1)
    n = cnt.sum(0)
    mu = (cnt * mean).sum(0) / n
    m2 = m2.sum(0) + (cnt * (mean - mu) ** 2).sum(0)
    return mu, m2 / n


# ------------------------------------------------------------------------------------------ Triton helpers
@triton.jit
def load_channel_pair(a_ptr, b_ptr, idx, mask, ENABLED: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Two per-channel vectors (a fused BN's scale and shift), or zeros when the layer has none."""
    a = tl.zeros([BLOCK], ACC)
    b = tl.zeros([BLOCK], ACC)
    if ENABLED:
        a = tl.load(a_ptr + idx, mask=mask, other=0.0).to(ACC)
        b = tl.load(b_ptr + idx, mask=mask, other=0.0).to(ACC)
    return a, b


@triton.jit
def load_stat_grads(mean_ptr, gmean_ptr, gvar_ptr, idx, mask, inv_m, STATS: tl.constexpr, ACC: tl.constexpr,
                    BLOCK: tl.constexpr):
    """Batch mean and the gradients reaching it and the variance, pre-scaled for d stat / d y (1/m, 2/m)."""
    mu = tl.zeros([BLOCK], ACC)
    gm = tl.zeros([BLOCK], ACC)
    gv2 = tl.zeros([BLOCK], ACC)
    if STATS:
        mu = tl.load(mean_ptr + idx, mask=mask, other=0.0).to(ACC)
        gm = tl.load(gmean_ptr + idx, mask=mask, other=0.0).to(ACC) * inv_m
        gv2 = tl.load(gvar_ptr + idx, mask=mask, other=0.0).to(ACC) * (2.0 * inv_m)
    return mu, gm, gv2


@triton.jit
def silu_fwd(u):
    return u / (1.0 + tl.exp(-u))


@triton.jit
def silu_fwd_bwd(u):
    """(silu(u), d silu / du)."""
    sig = 1.0 / (1.0 + tl.exp(-u))
    return u * sig, sig * (1.0 + u * (1.0 - sig))


@triton.jit
def tile_stats_merge(n_a, mean_a, m2_a, y, mask2d, n_b):
    """Merge the statistics of tile y ([BLOCK_P, BLOCK_C], valid where mask2d; n_b valid rows) into the running
    (n_a, mean_a [BLOCK_C], m2_a [BLOCK_C]) with the parallel-variance formula (chunked Welford)."""
    ys = tl.where(mask2d, y, 0.0)
    mean_b = tl.sum(ys, axis=0) / tl.maximum(n_b, 1.0)  # an empty tile (n_b == 0) leaves the run unchanged
    d = tl.where(mask2d, y - mean_b[None, :], 0.0)
    m2_b = tl.sum(d * d, axis=0)
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta * delta * (n_a * n_b / n)
    return n, mean, m2
