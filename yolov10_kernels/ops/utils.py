"""Helpers shared by every op file: the environment switches, the library namespace, input checks, memory
layouts, accumulation dtypes, block and grid sizing, output sizes, buffer allocation with the NaN-poison switch,
the on-device merge of partial statistics and sums, and the Triton device functions of the training convs.

Triton is optional (the C++ assignment op and the reference paths work without it): `triton` is None when it
cannot be imported and `TRITON_IMPORT_ERROR` says why."""
import contextlib
import math
import os
import warnings

import torch

from ..gpus import device_profile

try:
    import triton
    import triton.language as tl
    TRITON_IMPORT_ERROR = ""
except Exception as e:  # ImportError, or a broken install
    triton = tl = None
    TRITON_IMPORT_ERROR = f"triton cannot be imported ({type(e).__name__}: {e})"

NAMESPACE = "yolov10_kernels"

# With POISON on (the test suite turns it on; YOLOV10_KERNELS_POISON=1 does so by hand) each buffer a launcher
# allocates starts as NaN, so an element a kernel forgets to write shows up instead of passing by luck.
POISON = os.environ.get("YOLOV10_KERNELS_POISON", "0") == "1"

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ------------------------------------------------------------------------------------------ switches
def kernels_disabled():
    """YOLOV10_KERNELS=off (or 0/false/none/reference) turns every custom kernel off: the reference path runs."""
    return os.environ.get("YOLOV10_KERNELS", "").strip().lower() in ("off", "0", "false", "none", "reference")


def triton_interpreted():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_warned = set()


def warn_once(key, message, stacklevel=3):
    """The package's one warn-once mechanism: one RuntimeWarning per key and process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)


def op_name(name):
    """The qualified name of one of this library's ops: every registration goes through it."""
    return f"{NAMESPACE}::{name}"


# ----------------------------------------------------------------------------------------------- checks
def check_tensor(name, t, device=None, dim=None):
    """Validate one kernel input; messages name the argument and what is wrong with it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor (float32, float16, bfloat16 or float64), got {t.dtype}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has unsupported dtype {t.dtype}; use float32, float16, bfloat16 or float64")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the input is on {device}: all tensors must be on one device")


def is_fake(t):
    from torch._subclasses.fake_tensor import FakeTensor
    return isinstance(t, FakeTensor) or t.device.type == "meta"


def check_device(x):
    """Triton runs on CUDA tensors, or on CPU tensors through the interpreter (TRITON_INTERPRET=1); every
    launcher calls this first (the kernels are not even defined where triton cannot be imported)."""
    if is_fake(x):
        return
    if TRITON_IMPORT_ERROR:
        raise RuntimeError(f"yolov10_kernels Triton ops cannot run: {TRITON_IMPORT_ERROR}")
    if x.device.type == "cuda":
        if triton_interpreted():
            raise RuntimeError("TRITON_INTERPRET=1 runs Triton kernels on CPU tensors only; got a CUDA tensor")
        return
    if x.device.type == "cpu":
        if not triton_interpreted():
            raise RuntimeError("yolov10_kernels Triton ops got a CPU tensor but TRITON_INTERPRET is not set: the "
                               "kernels run on CUDA tensors, or on the CPU only through the Triton interpreter "
                               "(set TRITON_INTERPRET=1 before importing triton; slow, for testing)")
        return
    raise RuntimeError(f"yolov10_kernels Triton ops do not support {x.device.type} tensors")


def on_device(t):
    """Every Triton launch runs inside this: Triton launches on the current CUDA device (and its stream), so a
    tensor on cuda:1 while the current device is 0 needs its device made current; nothing for CPU and meta
    tensors."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


# ------------------------------------------------------------------------------------------ layouts and buffers
def is_channels_last(x):
    """True when x should be treated as NHWC: channels_last-contiguous and not plain contiguous (a tensor that is
    both, e.g. C == 1 or H == W == 1, counts as NCHW). The fake implementations use the same rule."""
    return x.dim() == 4 and (not x.is_contiguous()) and x.is_contiguous(memory_format=torch.channels_last)


def dense_4d(t):
    """t itself when NCHW- or channels_last-contiguous (kernels that read strides take both), else an NCHW copy."""
    return t if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last) else t.contiguous()


def token_strides(t):
    """(batch, channel, token) strides of a dense_4d (B, C, H, W) tensor: token n = y * W + x."""
    return t.stride(0), t.stride(1), t.stride(3)


def strides4(t):
    """The four strides of a 4-D tensor; zeros for an absent (None) one, whose kernel argument is never read."""
    return tuple(t.stride()) if t is not None and t.dim() == 4 else (0, 0, 0, 0)


def vec(t):
    """A per-channel vector as a contiguous 1-D tensor (None stays None). Its dtype is kept: the kernels convert
    on load, so no host op runs for a vector that is already contiguous (the usual case)."""
    if t is None:
        return None
    t = t.detach().reshape(-1)
    return t if t.is_contiguous() else t.contiguous()


def poison(t):
    """Fill a freshly allocated buffer with NaN when POISON is on; returns it."""
    return t.fill_(float("nan")) if POISON and not is_fake(t) and t.is_floating_point() else t


def empty(shape, like, dtype=None):
    """A (poisoned) contiguous buffer on like's device, in `dtype` (default: like's)."""
    return poison(torch.empty(shape, dtype=dtype or like.dtype, device=like.device))


def empty_4d(shape, like, dtype=None, channels_last=None):
    """A (poisoned) 4-D buffer, channels_last when asked (None: when `like` is channels_last)."""
    cl = is_channels_last(like) if channels_last is None else channels_last
    fmt = torch.channels_last if cl else torch.contiguous_format
    return poison(torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt))


# ------------------------------------------------------------------------------------------ dtypes
def acc_dtype(x):
    """Accumulators, statistics, partial sums and weight gradients: fp32, fp64 for fp64 (x a tensor or dtype)."""
    dtype = x if isinstance(x, torch.dtype) else x.dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def tf32_allowed(x):
    """fp32 dots of CUDA tensors may use TF32 when torch allows it for matmuls or for cuDNN convs (the eager
    convolutions we replace; cuDNN's switch is on by default). Never for fp64 or off the GPU (the interpreter)."""
    return (x.dtype == torch.float32 and x.device.type == "cuda"
            and (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32))


def dot_precision(x):
    """tl.dot's input_precision: fp32 in TF32 where torch allows it (tf32_allowed), else IEEE; fp64 IEEE;
    fp16/bf16 take the tensor cores' native path (the argument is ignored there)."""
    if x.dtype in (torch.float32, torch.float64):
        return "tf32" if tf32_allowed(x) else "ieee"
    return "tf32"


# ------------------------------------------------------------------------------------------ sizes
def next_pow2(n, lo=1):
    """The smallest power of two >= max(n, lo) (tl.arange and tl.dot want powers of two; tl.dot at least 16)."""
    return max(lo, 1 << max(0, int(n) - 1).bit_length())


def channel_block(n, gpu_cap, interp_cap):
    """A 1-D block over n channels (or elements) of a per-channel kernel: the next power of two >= 16, capped
    (the interpreter pays per program: a higher cap there)."""
    return min(max(next_pow2(n), 16), interp_cap if triton_interpreted() else gpu_cap)


def layout_channel_block(C, x):
    """BLOCK_C of a tile over x's (positions x channels): wide channel blocks when channels are contiguous
    (channels_last; and on the interpreter, which pays per program), narrow ones for NCHW, whose tiles run along
    the contiguous spatial axis."""
    if triton_interpreted() or x.device.type != "cuda":
        return min(max(next_pow2(C), 2), 64)
    if is_channels_last(x):
        return min(max(next_pow2(C), 8), 64)
    return min(max(next_pow2(C), 2), 4)


def conv_out_size(size, k, stride):
    """Output extent of a kxk conv with zero padding k // 2."""
    return (size + 2 * (k // 2) - k) // stride + 1


def target_programs(device):
    """About how many programs fill the device: its profile's (yolov10_kernels.gpus; the interpreter runs them one
    after another, so 1 there unless the tests emulate a GPU's grid)."""
    return device_profile(device).programs


def split_tiles(num_tiles, other_programs, device):
    """Split num_tiles tiles over programs, `other_programs` being the grid's other extent.
    Returns (splits, tiles_per_split) with splits * tiles_per_split >= num_tiles."""
    want = max(1, math.ceil(target_programs(device) / max(1, other_programs)))
    splits = max(1, min(num_tiles, want))
    per = math.ceil(num_tiles / splits)
    return math.ceil(num_tiles / per), per


# ------------------------------------------------------------------------------------------ autotuning
# ptxas left to itself caps some variants at 96-168 registers on sm_75 and sm_100 (an occupancy heuristic, not a
# need) and they spill: every launch of a kernel with dot or depthwise tiles states the hardware's ceiling, which
# 8 warps (the most any config uses) can all hold (256 threads x 255 <= 65,536 registers per SM on every profile).
MAXNREG = 255
# Above 2^16 every config's grid covers the largest GPU's SMs several times over, so the best config no longer
# depends on the size: one bucket for all of them.
BUCKET_CAP = 1 << 16


def size_bucket(n):
    """The autotune keys' stand-in for a size that changes with the image (pixels or tokens per image; the batch
    only multiplies the grid, so a new batch size never re-tunes): the next power of two, capped at BUCKET_CAP."""
    return min(next_pow2(n), BUCKET_CAP)


def config(num_warps=4, num_stages=2, maxnreg=MAXNREG, **blocks):
    """One autotune config, with the register ceiling (MAXNREG; None: ptxas' own choice, for the kernels whose
    code a ceiling makes worse - chain_eval_kernels.py)."""
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages, maxnreg=maxnreg)


def autotune(configs, key, prune):
    """The package's one autotune wrapper: triton.autotune over `configs` keyed by `key`, pruned before any timing
    by prune(configs, named_args, **kwargs) to the configs the GPU at hand can launch (gpus.device_profile).
    Launch the result with launch_tuned."""
    return triton.autotune(configs, key=key, prune_configs_by={"early_config_prune": prune})


def launch_tuned(tuned, grid, interp_meta, args, kwargs):
    """Launch an autotune() kernel on args[0]'s device: timed configs on a GPU; under the interpreter (which cannot
    time several configs) the bare kernel with interp_meta's block sizes. grid: a tuple, or a function of the
    launch's meta-parameters."""
    with on_device(args[0]):
        if triton_interpreted():
            meta = {**kwargs, **interp_meta}
            tuned.fn[grid(meta) if callable(grid) else grid](*args, **meta)
        else:
            tuned[grid](*args, **kwargs)


# ------------------------------------------------------------------------------------------ statistics
def partial_stats(programs, channels, like, dtype, stats):
    """Per-program (count, mean, M2) buffers of the statistics epilogue; 1-element dummies without it."""
    if not stats:
        dummy = like.new_empty(1, dtype=dtype)
        return dummy, dummy, dummy
    return empty(programs, like, dtype), empty((programs, channels), like, dtype), empty((programs, channels), like, dtype)


def grad_like(g, t):
    """A vector gradient (in the accumulation dtype) as the gradient of t: t's dtype and shape; None for no t."""
    if t is None:
        return None
    return g if g.dtype == t.dtype and g.shape == t.shape else g.to(t.dtype).reshape(t.shape)


def stat_grads(grad_mean, grad_var):
    """The gradients reaching (mean, var) with one of them None (its output unused; autograd does not make zeros
    for it) completed with zeros, or (None, None) when neither arrived."""
    if grad_mean is None and grad_var is None:
        return None, None
    return (grad_mean if grad_mean is not None else torch.zeros_like(grad_var),
            grad_var if grad_var is not None else torch.zeros_like(grad_mean))


# The most partial rows one program of a merge walks: each row is a dependent step (a load, then an update of the
# running result), so a serial walk over all P rows (3,200 for a pointwise layer at 80x80, batch 64) costs about a
# millisecond of pure latency. The merges are trees instead: level 1 merges groups of `merge_rows(P)` rows in
# parallel, the next level merges the groups' results, in a fixed order (bit-stable run to run).
MERGE_ROWS = 256


def merge_rows(P):
    """Rows per program of the merge tree of P partial rows: about sqrt(P), so that both levels walk about as many
    rows, at most MERGE_ROWS (past MERGE_ROWS ** 2 rows the tree gets a third level)."""
    return min(MERGE_ROWS, math.isqrt(max(P, 1) - 1) + 1)


def finish_stats(cnt, mean, m2, like):
    """(mean, biased var) per channel from per-program partials (count [P], mean [P, C], M2 [P, C]), merged on
    the device with the parallel-variance formula (Chan et al.) as a tree (two small launches up to
    MERGE_ROWS ** 2 rows): no host glue."""
    P, C = mean.shape
    rows, acc = merge_rows(P), mean.dtype
    block = channel_block(C, 256, 1024)
    while True:
        groups = max(1, triton.cdiv(P, rows))
        final = groups == 1
        out = (cnt, empty(C, like, acc), empty(C, like, acc)) if final else (  # cnt: not written when final
            empty(groups, like, acc), empty((groups, C), like, acc), empty((groups, C), like, acc))
        with on_device(like):
            _merge_stats_kernel[(triton.cdiv(C, block), groups)](cnt, mean, m2, *out, P, C, rows, FINAL=final,
                                                                ACC=tl_acc(acc), BLOCK_C=block)
        if final:
            return out[1], out[2]
        (cnt, mean, m2), P = out, groups


def sum_partials(partials, out, taps=0):
    """out = partials.sum(0) on the device, cast to out's dtype (per-program fp32 partial gradients, summed as a
    tree in a fixed order: deterministic). taps > 0: partials are (P, taps, C) and out is a depthwise weight
    (C, 1, k, k) with k * k == taps (the transposed store)."""
    P, n = partials.shape[0], partials[0].numel()
    rows, acc = merge_rows(P), partials.dtype
    block = channel_block(n, 512, 4096)
    while True:
        groups = max(1, triton.cdiv(P, rows))
        final = groups == 1
        dst = out if final else empty((groups, n), partials, acc)
        with on_device(partials):
            _sum_partials_kernel[(triton.cdiv(n, block), groups)](partials, dst, P, n, max(taps, 1), rows,
                                                                  FINAL=final, TRANSPOSE=final and taps > 0,
                                                                  ACC=tl_acc(acc), BLOCK=block)
        if final:
            return out
        partials, P = dst, groups


# ------------------------------------------------------------------------------------------ Triton device functions
if triton is not None:
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
    def store_partial_stats(pcnt_ptr, pmean_ptr, pm2_ptr, row, c, cmask, C, n, mean, m2, BLOCK_C: tl.constexpr):
        """Row `row` of the per-program statistics partials: count (every lane holds it), mean and M2 of channels c
        (finish_stats merges the rows)."""
        lane = tl.arange(0, BLOCK_C)
        tl.store(pcnt_ptr + row + lane * 0, n, mask=lane == 0)
        tl.store(pmean_ptr + row * C + c, mean, mask=cmask)
        tl.store(pm2_ptr + row * C + c, m2, mask=cmask)

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

    @triton.jit(do_not_specialize=["P", "ROWS"])
    def _merge_stats_kernel(cnt_ptr, mean_ptr, m2_ptr, ocnt_ptr, omean_ptr, om2_ptr, P, C, ROWS,
                            FINAL: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
        """Merges rows [g ROWS, (g + 1) ROWS) of the P partial rows, g = program_id(1), into row g of the next
        level's partials (ocnt, omean, om2); FINAL (one group): into (mean, biased var) per channel (omean, om2)."""
        c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        g = tl.program_id(1)
        cm = c < C
        n = tl.zeros([BLOCK_C], ACC)
        mean = tl.zeros([BLOCK_C], ACC)
        m2 = tl.zeros([BLOCK_C], ACC)
        for i in range(ROWS):
            p = g * ROWS + i + c * 0
            pm = p < P  # the last group's rows past P count as programs that saw no rows
            n_b = tl.load(cnt_ptr + p, mask=pm, other=0.0).to(ACC)
            mean_b = tl.load(mean_ptr + p * C + c, mask=cm & pm, other=0.0).to(ACC)
            m2_b = tl.load(m2_ptr + p * C + c, mask=cm & pm, other=0.0).to(ACC)
            n_ab = n + n_b
            f = n_b / tl.maximum(n_ab, 1.0)  # a program that saw no rows (n_b == 0) changes nothing
            delta = mean_b - mean
            mean += delta * f
            m2 += m2_b + delta * delta * n * f
            n = n_ab
        if FINAL:
            tl.store(omean_ptr + c, mean, mask=cm)
            tl.store(om2_ptr + c, m2 / tl.maximum(n, 1.0), mask=cm)
        else:
            tl.store(ocnt_ptr + g + c * 0, n, mask=c == 0)  # every lane holds the count: one store
            tl.store(omean_ptr + g * C + c, mean, mask=cm)
            tl.store(om2_ptr + g * C + c, m2, mask=cm)

    @triton.jit(do_not_specialize=["P", "ROWS"])
    def _sum_partials_kernel(p_ptr, out_ptr, P, N, TAPS, ROWS, FINAL: tl.constexpr, TRANSPOSE: tl.constexpr,
                             ACC: tl.constexpr, BLOCK: tl.constexpr):
        """Sums rows [g ROWS, (g + 1) ROWS) of the P partial rows, g = program_id(1), into row g of the next
        level's partials; FINAL (one group): into out, in its dtype."""
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        g = tl.program_id(1)
        m = i < N
        acc = tl.zeros([BLOCK], ACC)
        for r in range(ROWS):
            p = g * ROWS + r
            acc += tl.load(p_ptr + p * N + i, mask=m & (p < P), other=0.0).to(ACC)
        o = i
        if TRANSPOSE:  # i = tap * C + c  ->  (c, tap) of a (C, 1, k, k) weight
            C = N // TAPS
            o = (i % C) * TAPS + i // C
        if not FINAL:
            o = g * N + i
        tl.store(out_ptr + o, acc.to(out_ptr.dtype.element_ty), mask=m)
