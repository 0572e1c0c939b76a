"""Depthwise kxk conv (k = 3, 5 or 7, stride 1 or 2, padding k // 2) for training, with a BN prologue and epilogue.

    a   = in_act(x * in_scale + in_shift)                   prologue, per input channel, on the fly
    y   = depthwise_conv(a, weight, stride, padding=k // 2)   (zero padding applies to a)
    out = out_act(y * out_scale + out_shift) + residual     epilogue (each part optional); or out = y (raw)
    mean, var = batch mean and biased variance of y per channel (optional)

Op `yolov10_kernels::dw_conv_bn(x, weight, in_scale?, in_shift?, out_scale?, out_shift?, residual?, stride,
in_act, out_act, write_out, stats) -> (out, mean, var)`; `out` is empty when write_out is False (a statistics-only
pass), mean/var are empty when stats is False. Differentiable in x, weight, the four affine vectors and residual.
Acts are SiLU (True) or identity (False).

The launchers here (the conv pass, the backward passes) also run the other depthwise ops: dw_conv_bn_act.py (a
chain's last depthwise layer with its BN) and dw_repvgg_bn.py (a RepVGGDW in training); the kernels and how they
tile are in dwconv_kernels.py."""
import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..gpus import emulating
from .utils import (MAXNREG, acc_dtype, check_device, check_tensor, conv_out_size, empty, empty_4d, finish_stats,
                    grad_like, is_channels_last, layout_channel_block, next_pow2, on_device, op_name, partial_stats,
                    split_tiles, stat_grads, strides4, sum_partials, tl_acc, triton, triton_interpreted, vec)

if triton is not None:  # without triton the ops import, and their launchers raise (utils.check_device)
    from .dwconv_kernels import _dw_bwd_kernel, _dw_conv_kernel, _dw_grad_y_kernel

Tensor = torch.Tensor



def _tapsvec(x):
    """The interpreter's vectorised-taps path (many times faster there), unless the tests emulate a GPU's grid
    (gpus.emulate): then the GPU's path (staged tiles, tap loops) runs under the interpreter too."""
    return x.device.type != "cuda" and not emulating()


def _blocks(C, spatial, x, K=3, bwd=False, prologue=True, dual=False):
    """(BLOCK_P, BLOCK_C, num_warps). channels_last: wide channel blocks (contiguous); NCHW: wide spatial blocks.
    GPU sizes from ptxas on every GPU profile (bench.static), chosen so that no variant spills: a 64x64 tile with the
    BN + SiLU prologue needs 8 warps (without one, 4); the backward over input positions, which also holds the
    activation and its derivative, 32 positions a tile on 8 warps; half the positions for a RepVGGDW's two
    branches (dual: two accumulators, their statistics terms and grad_out scales; a 64x64 bf16 dual tile spills
    56 bytes on sm_80)."""
    bc = layout_channel_block(C, x)
    if triton_interpreted() or x.device.type != "cuda":
        # the interpreter pays per program and per op, not per element: few, large tiles
        cap = 256 if not _tapsvec(x) else max(16, (1 << 18) // (next_pow2(K * K) * bc))
        return min(max(next_pow2(spatial), 16), cap), bc, 4
    if is_channels_last(x):
        bp = (32 if bwd else 64) if bc == 64 else 128
    else:
        bp = 256
    if x.dtype == torch.float64:  # fp64 (gradcheck) tiles: keep register use and compile time small
        bp = max(16, min(bp, 1024 // bc))
    big = bp * bc >= (2048 if bwd else 4096)
    if dual:
        bp //= 2
    return bp, bc, (8 if big and (prologue or bwd) else 4)


@dataclass
class _ConvGrid:
    """How a conv kernel over output tiles (_dw_conv_kernel, _dw_grad_y_kernel) is launched: blocks, warps, the
    (splits, channel blocks) grid, tiles per program, TILE_W, the number of tiles and each program's scratch
    slot (see _tile_positions)."""
    BP: int
    BC: int
    nw: int
    grid: tuple
    per: int
    tile_w: int
    nt: int
    slot: int
    scratch: torch.Tensor


def _conv_grid(x, C, N, OH, OW, K, stride, prologue, dual=False):
    """Output tiles: BLOCK_P flat positions under the interpreter's TAPS_VEC path; else TILE_H x TILE_W blocks,
    each staging its (TILE_H - 1) * stride + k by (TILE_W - 1) * stride + k input region in its slot. dual: a
    RepVGGDW's pass over both branches (two accumulators live: half the positions a tile)."""
    BP, BC, nw = _blocks(C, N * OH * OW, x, K, prologue=prologue, dual=dual)
    cblk = triton.cdiv(C, BC)
    if _tapsvec(x):
        tw, nt, slot = 1, triton.cdiv(N * OH * OW, BP), 0
    else:
        tw = min(next_pow2(OW), 16 if BP >= 128 else 8, BP)
        th = BP // tw
        region = ((th - 1) * stride + K) * ((tw - 1) * stride + K)
        nt, slot = N * triton.cdiv(OH, th) * triton.cdiv(OW, tw), triton.cdiv(region, BP) * BP * BC
    splits, per = split_tiles(nt, cblk, x.device)
    return _ConvGrid(BP, BC, nw, (splits, cblk), per, tw, nt, slot, empty(max(1, splits * cblk * slot), x))


def _check_args(x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride):
    check_tensor("x", x, dim=4)
    check_device(x)
    check_tensor("weight", weight, device=x.device)
    C = x.shape[1]
    if weight.dim() not in (3, 4) or weight.shape[0] != C or (weight.dim() == 4 and weight.shape[1] != 1) \
            or weight.shape[-1] != weight.shape[-2] or weight.shape[-1] not in (3, 5, 7):
        raise ValueError(f"depthwise weight must be (C, 1, k, k) with C = x's {C} channels and k in 3, 5, 7; "
                         f"got weight {tuple(weight.shape)} for x {tuple(x.shape)}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    for name, t in (("in_scale", in_scale), ("in_shift", in_shift), ("out_scale", out_scale), ("out_shift", out_shift)):
        if t is not None:
            check_tensor(name, t, device=x.device)
            if t.numel() != C:
                raise ValueError(f"{name} must have {C} elements (one per channel of x), got {t.numel()}")
    if (in_scale is None) != (in_shift is None) or (out_scale is None) != (out_shift is None):
        raise ValueError("scale and shift must be given together")
    if residual is not None:
        check_tensor("residual", residual, device=x.device, dim=4)


def _conv_pass(cg, x, weight, stride, in_act, si=None, ti=None, so=None, to=None, out_act=False, residual=None,
                out=None, stats=None, weight2=None, out2=None, stats2=None, grad_out=None, g_sums=None):
    """One _dw_conv_kernel launch on the grid cg; what is None is not computed (dummy pointers). stats / stats2:
    the per-program (count, mean, M2) partials of the output / of the second weight's output; g_sums: the
    per-program partial sums of grad_out * y and grad_out * y2 (rows 2 pid and 2 pid + 1)."""
    N, C, H, W = x.shape
    K = weight.shape[-1]
    dummy = x.new_empty(1, dtype=acc_dtype(x))

    def ptr(t):
        return t if t is not None else dummy
    with on_device(x):
        _dw_conv_kernel[cg.grid](
            x, _taps(weight), ptr(si), ptr(ti), ptr(so), ptr(to), ptr(residual), ptr(out),
            *(stats if stats is not None else (dummy,) * 3), _taps(weight2) if weight2 is not None else dummy,
            ptr(out2),
            *(stats2 if stats2 is not None else (dummy,) * 3), ptr(grad_out), ptr(g_sums),
            cg.scratch, C, N, H, W, *_out_hw(H, W, K, stride), cg.nt, cg.per, cg.slot,
            *x.stride(), *strides4(out if out is not None else out2), *strides4(residual), *strides4(grad_out),
            K=K, K2=weight2.shape[-1] if weight2 is not None else 0, STRIDE=stride, IN_AFFINE=si is not None,
            IN_ACT=bool(in_act), OUT_AFFINE=so is not None, OUT_ACT=bool(out_act), HAS_RES=residual is not None,
            WRITE_OUT=out is not None, STATS=stats is not None, G_SUMS=grad_out is not None, ACC=tl_acc(x.dtype),
            TAPS_VEC=_tapsvec(x), KK_PAD=next_pow2(K * K), TILE_W=cg.tile_w, BLOCK_P=cg.BP, BLOCK_C=cg.BC,
            num_warps=cg.nw, maxnreg=MAXNREG)


def _out_hw(H, W, K, stride):
    return conv_out_size(H, K, stride), conv_out_size(W, K, stride)


def _dw_forward(x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride, in_act, out_act,
                write_out, stats):
    N, C, H, W = x.shape
    K = weight.shape[-1]
    OH, OW = _out_hw(H, W, K, stride)
    if residual is not None and tuple(residual.shape) != (N, C, OH, OW):
        raise ValueError(f"residual must have the output's shape {(N, C, OH, OW)}, got {tuple(residual.shape)}")
    sd = acc_dtype(x)
    out = empty_4d((N, C, OH, OW), x) if write_out else x.new_empty(0)
    if N * OH * OW == 0 or C == 0:
        return out, x.new_zeros(C if stats else 0, dtype=sd), x.new_zeros(C if stats else 0, dtype=sd)
    cg = _conv_grid(x, C, N, OH, OW, K, stride, in_scale is not None or bool(in_act))
    partials = partial_stats(cg.grid[0], C, x, sd, True) if stats else None
    _conv_pass(cg, x, weight, stride, in_act, *(vec(t) for t in (in_scale, in_shift, out_scale, out_shift)),
                out_act, residual, out if write_out else None, partials)
    if stats:
        return (out, *finish_stats(*partials, x))
    return out, x.new_empty(0, dtype=sd), x.new_empty(0, dtype=sd)


def _dw_dual_pass(x, weight, weight2, si, ti, in_act, grad_out=None):
    """Both branches of a RepVGGDW (weight2 centred in weight's taps, stride 1) in one pass over the staged input.
    Without grad_out: their batch statistics (mean, var, mean2, var2), nothing written. With grad_out (backward):
    their raw outputs y, y2 recomputed and written, and (sum grad_out * y, sum grad_out * y2) per channel:
    (y, y2, g_sum, g_sum2)."""
    N, C, H, W = x.shape
    sd = acc_dtype(x)
    cg = _conv_grid(x, C, N, H, W, weight.shape[-1], 1, si is not None or bool(in_act), dual=True)
    if grad_out is None:
        stats, stats2 = (partial_stats(cg.grid[0], C, x, sd, True) for _ in range(2))
        _conv_pass(cg, x, weight, 1, in_act, si, ti, stats=stats, weight2=weight2, stats2=stats2)
        return (*finish_stats(*stats, x), *finish_stats(*stats2, x))
    y, y2 = empty_4d(tuple(x.shape), x), empty_4d(tuple(x.shape), x)
    g_sums = empty((cg.grid[0], 2, C), x, sd)
    _conv_pass(cg, x, weight, 1, in_act, si, ti, out=y, weight2=weight2, out2=y2, grad_out=grad_out,
                g_sums=g_sums)
    g = sum_partials(g_sums, empty(2 * C, x, sd))
    return y, y2, g[:C], g[C:]


def _taps(weight):
    """The (C, 1, k, k) depthwise weight as (C, k*k) rows, without a copy when it is contiguous."""
    w = weight.detach().reshape(weight.shape[0], -1)
    return w if w.is_contiguous() else w.contiguous()


def _grad_y_pass(grad_out, x, w, si, ti, so, to, mean, grad_mean, grad_var, stride, in_act, out_act, out=None):
    """d loss / d y in fp32 with y recomputed (never saved): through the epilogue (affine so/to, act) when grad_out
    is given, plus the batch statistics' term when grad_mean/grad_var are. Returns (g, g_so, g_to); g is written
    into `out` when given (it may be grad_out itself: each element is read before it is written, by one thread)."""
    N, C, H, W = x.shape
    K = math.isqrt(w.shape[1])
    OH, OW = _out_hw(H, W, K, stride)
    sd = acc_dtype(x)
    dummy = x.new_empty(1, dtype=sd)
    has_go, stats = grad_out is not None, grad_mean is not None
    g = out if out is not None else empty_4d((N, C, OH, OW), x, dtype=sd)
    NP = N * OH * OW
    cg = _conv_grid(x, C, N, OH, OW, K, stride, si is not None or bool(in_act))
    pgos = empty((cg.grid[0], C), x, sd) if so is not None else dummy
    pgot = empty((cg.grid[0], C), x, sd) if so is not None else dummy
    with on_device(x):
        _dw_grad_y_kernel[cg.grid](
            x, w, si if si is not None else dummy, ti if ti is not None else dummy,
            so if so is not None else dummy, to if to is not None else dummy,
            grad_out if has_go else dummy, vec(mean) if stats else dummy,
            vec(grad_mean) if stats else dummy, vec(grad_var) if stats else dummy,
            g, pgos, pgot, 1.0 / NP,
            cg.scratch, C, N, H, W, OH, OW, cg.nt, cg.per, cg.slot,
            *x.stride(), *(grad_out.stride() if has_go else (0, 0, 0, 0)), *g.stride(),
            K=K, STRIDE=stride, IN_AFFINE=si is not None, IN_ACT=bool(in_act), OUT_AFFINE=so is not None,
            OUT_ACT=bool(out_act), HAS_GO=has_go, STATS=stats, ACC=tl_acc(x.dtype), TAPS_VEC=_tapsvec(x),
            KK_PAD=next_pow2(K * K), TILE_W=cg.tile_w, BLOCK_P=cg.BP, BLOCK_C=cg.BC, num_warps=cg.nw,
            maxnreg=MAXNREG)
    if so is None:
        return g, None, None
    return g, sum_partials(pgos, empty(C, x, sd)), sum_partials(pgot, empty(C, x, sd))


def _input_grad_pass(g, x, weight, w, si, ti, stride, in_act, y=None, mean=None, grad_mean=None, grad_var=None,
                     g_scale=None, second=None):
    """(grad x, grad weight, grad in_scale, grad in_shift) from g = d loss / d y: one pass over input positions
    and the on-device sums of its per-program partials. With the saved raw output y, g is grad_out and the batch
    statistics' term is added on the fly (see _grad_at); g_scale: y reached grad_out scaled per channel.
    second = (weight2, y2, mean2, grad_mean2, grad_var2, g_scale2): a second depthwise weight over the same input
    (a RepVGGDW's small branch): grad x sums both branches, and its weight gradient comes last."""
    N, C, H, W = x.shape
    K = weight.shape[-1]
    OH, OW = _out_hw(H, W, K, stride)
    sd = acc_dtype(x)
    dummy = x.new_empty(1, dtype=sd)
    gx = empty_4d((N, C, H, W), x)
    NP = N * H * W
    BP, BC, nw = _blocks(C, NP, x, K, bwd=True, dual=second is not None)
    cblk = triton.cdiv(C, BC)
    splits, per = split_tiles(triton.cdiv(NP, BP), cblk, x.device)
    pdw = empty((splits, K * K, C), x, sd)
    pgs = empty((splits, C), x, sd) if si is not None else dummy
    pgt = empty((splits, C), x, sd) if si is not None else dummy
    y_stats = y is not None
    w2, y2, mean2, gm2, gv2, g_scale2 = second if second is not None else (None,) * 6
    K2 = w2.shape[-1] if second is not None else 0
    pdw2 = empty((splits, K2 * K2, C), x, sd) if K2 else dummy
    with on_device(x):
        _dw_bwd_kernel[(splits, cblk)](
            x, w, si if si is not None else dummy, ti if ti is not None else dummy, g, y if y_stats else dummy,
            *((vec(mean), vec(grad_mean), vec(grad_var)) if y_stats else (dummy,) * 3), 1.0 / (N * OH * OW),
            gx, pdw, pgs, pgt, vec(g_scale) if g_scale is not None else dummy,
            *((_taps(w2), y2, vec(mean2), vec(gm2), vec(gv2)) if K2 else (dummy,) * 5),
            vec(g_scale2) if g_scale2 is not None else dummy, pdw2,
            C, H, W, OH, OW, NP, per,
            *x.stride(), *g.stride(), *strides4(y), *gx.stride(),
            K=K, K2=K2, STRIDE=stride, IN_AFFINE=si is not None, IN_ACT=bool(in_act), GO_SCALE=g_scale is not None,
            Y_STATS=y_stats, ACC=tl_acc(x.dtype), TAPS_VEC=_tapsvec(x), KK_PAD=next_pow2(K * K), BLOCK_P=BP,
            BLOCK_C=BC, num_warps=nw, maxnreg=MAXNREG)
    gws = [sum_partials(pdw, torch.empty_like(weight, memory_format=torch.contiguous_format), taps=K * K)]
    if K2:
        gws.append(sum_partials(pdw2, torch.empty_like(w2, memory_format=torch.contiguous_format), taps=K2 * K2))
    if si is None:
        return gx, *gws, x.new_empty(0, dtype=sd), x.new_empty(0, dtype=sd)
    return gx, *gws, sum_partials(pgs, empty(C, x, sd)), sum_partials(pgt, empty(C, x, sd))


def _dw_backward(grad_out, grad_mean, grad_var, x, weight, in_scale, in_shift, out_scale, out_shift, mean, y,
                 stride, in_act, out_act, write_out, stats):
    N, C, H, W = x.shape
    K = weight.shape[-1]
    OH, OW = _out_hw(H, W, K, stride)
    sd = acc_dtype(x)
    has_go = bool(write_out) and grad_out is not None and grad_out.numel() > 0
    grad_mean, grad_var = stat_grads(grad_mean, grad_var)
    stats = bool(stats) and grad_mean is not None and grad_mean.numel() > 0

    def zeros_or_empty(t):  # distinct tensors: a custom op's outputs may not alias each other
        return torch.zeros(C if t is not None else 0, dtype=sd, device=x.device)
    if (not has_go and not stats) or N * OH * OW == 0 or C == 0:
        return (empty_4d((N, C, H, W), x).zero_(), torch.zeros_like(weight),
                *(zeros_or_empty(t) for t in (in_scale, in_shift, out_scale, out_shift)))
    w = _taps(weight)
    si, ti, so, to = (vec(t) for t in (in_scale, in_shift, out_scale, out_shift))
    g, g_os, g_ot = grad_out, None, None
    if stats and has_go and y is not None and y.numel():  # a raw output that was saved: no recompute pass
        return (*_input_grad_pass(grad_out, x, weight, w, si, ti, stride, in_act, y, mean, grad_mean, grad_var),
                x.new_empty(0, dtype=sd), x.new_empty(0, dtype=sd))
    if stats or so is not None or (out_act and has_go):
        g, g_os, g_ot = _grad_y_pass(grad_out if has_go else None, x, w, si, ti, so, to, mean if stats else None,
                                     grad_mean if stats else None, grad_var if stats else None, stride, in_act,
                                     out_act)
    # else g = grad_out: any strides (even expanded ones) are read as they are
    if g_os is None:
        g_os, g_ot = x.new_empty(0, dtype=sd), x.new_empty(0, dtype=sd)
    return (*_input_grad_pass(g, x, weight, w, si, ti, stride, in_act), g_os, g_ot)

@torch.library.custom_op(op_name("dw_conv_bn"), mutates_args=())
def dw_conv_bn(x: Tensor, weight: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor],
               out_scale: Optional[Tensor], out_shift: Optional[Tensor], residual: Optional[Tensor],
               stride: int, in_act: bool, out_act: bool, write_out: bool, stats: bool
               ) -> tuple[Tensor, Tensor, Tensor]:
    """Depthwise kxk conv (k = 3, 5 or 7, stride 1 or 2, zero padding k // 2 applied to a) with a BN prologue and
    epilogue (the module docstring): a = in_act(x * in_scale + in_shift); y = depthwise_conv(a, weight);
    out = out_act(y * out_scale + out_shift) + residual (each part optional), or out = y (raw); mean, var = the
    batch mean and biased variance of y per channel. Differentiable (register_autograd) in x, weight, the four
    affine vectors and residual (whose gradient is grad_out). Empty tensors for what was not asked for.

    Arguments:
        x: (N, C, H, W), fp32/fp16/bf16/fp64, NCHW or channels_last (read through its strides); on a CUDA device,
            or on the CPU only under TRITON_INTERPRET=1.
        weight: (C, 1, k, k) or (C, k, k), k in 3, 5, 7; a float dtype (converted on load); x's device.
        in_scale, in_shift: C elements each (e.g. (C,)), a float dtype, x's device; both or neither. None: no
            input affine.
        out_scale, out_shift: C elements each, a float dtype, x's device; both or neither. None: no output affine.
        residual: (N, C, OH, OW) (the output's shape), a float dtype, x's device, any strides; added after out_act.
            None: no residual.
        stride: 1 or 2; OH = (H - 1) // stride + 1 (likewise OW).
        in_act, out_act: SiLU (True) or identity (False) after the input / output affine.
        write_out: write out; False: a statistics-only pass (out empty).
        stats: compute mean and var of y; False: both empty.

    Returns:
        out: (N, C, OH, OW) in x's dtype, channels_last when x is (else NCHW); (0,) when write_out is False.
        mean, var: (C,) batch mean and biased variance of y, in the accumulation dtype (fp32, fp64 for fp64 x);
            (0,) when stats is False.

    Raises:
        TypeError: x, weight, a given affine vector or residual is not a tensor, or not fp32/fp16/bf16/fp64.
        ValueError: x or residual not 4-D; weight not (C, 1, k, k) / (C, k, k) with k in 3, 5, 7; stride not 1
            or 2; an affine vector without C elements; a scale without its shift (or vice versa); a tensor on
            another device than x; residual not of the output's shape.
        RuntimeError: Triton cannot be imported; a CPU x without TRITON_INTERPRET=1, a CUDA x with it, or another
            device type (utils.check_device).
    """
    _check_args(x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride)
    return _dw_forward(x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride, in_act, out_act,
                       write_out, stats)


@dw_conv_bn.register_fake
def _dw_conv_bn_fake(x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride, in_act, out_act,
                     write_out, stats):
    _check_args(x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride)
    N, C, H, W = x.shape
    K = weight.shape[-1]
    sd = acc_dtype(x)
    out = empty_4d((N, C, *_out_hw(H, W, K, stride)), x) if write_out else x.new_empty(0)
    return out, x.new_empty(C if stats else 0, dtype=sd), x.new_empty(C if stats else 0, dtype=sd)


@torch.library.custom_op(op_name("dw_conv_bn_backward"), mutates_args=())
def dw_conv_bn_backward(grad_out: Optional[Tensor], grad_mean: Optional[Tensor], grad_var: Optional[Tensor],
                        x: Tensor, weight: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor],
                        out_scale: Optional[Tensor], out_shift: Optional[Tensor], mean: Optional[Tensor],
                        y: Optional[Tensor], stride: int, in_act: bool, out_act: bool, write_out: bool, stats: bool
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward of dw_conv_bn: (grad x, grad weight, grad in_scale, grad in_shift, grad out_scale, grad
    out_shift) from the gradients reaching out, mean and var. d loss / d y is formed through the epilogue
    (affine, act) plus the batch statistics' term; y is recomputed from x, unless the raw output was saved (y).
    Residual's gradient is grad_out itself (the autograd formula passes it on; not returned here).

    Arguments:
        grad_out: (N, C, OH, OW), x's dtype and device, any strides; None or empty: out got no gradient (also
            ignored when write_out is False).
        grad_mean, grad_var: (C,) gradients reaching mean / var, the accumulation dtype (fp32, fp64 for fp64 x),
            x's device; one None is taken as zeros, both None (or stats False): no statistics term.
        x, weight, in_scale, in_shift, out_scale, out_shift: the forward's (see dw_conv_bn); x on a CUDA device,
            or the CPU only under TRITON_INTERPRET=1; the rest on x's device; None where the forward had None.
        mean: (C,) the forward's batch mean (accumulation dtype); None when stats is False.
        y: (N, C, OH, OW) the forward's raw output, saved only when out was y itself with batch statistics
            (write_out and stats, no output affine, out_act or residual); None: y is recomputed.
        stride, in_act, out_act, write_out, stats: the forward's flags.

    Returns:
        grad x: (N, C, H, W) in x's dtype, channels_last when x is (else NCHW).
        grad weight: weight's shape and dtype, contiguous.
        grad in_scale, grad in_shift, grad out_scale, grad out_shift: (C,) in the accumulation dtype (fp32, fp64
            for fp64 x); (0,) where that vector was not given. All zeros when no gradient arrived or the output
            is empty.

    Raises:
        No checks of its own (autograd passes the forward's checked tensors).
    """
    return _dw_backward(grad_out, grad_mean, grad_var, x, weight, in_scale, in_shift, out_scale, out_shift, mean,
                        y, stride, in_act, out_act, write_out, stats)


@dw_conv_bn_backward.register_fake
def _dw_conv_bn_backward_fake(grad_out, grad_mean, grad_var, x, weight, in_scale, in_shift, out_scale, out_shift,
                              mean, y, stride, in_act, out_act, write_out, stats):
    C = x.shape[1]
    sd = acc_dtype(x)

    def vec(t):
        return x.new_empty(C if t is not None else 0, dtype=sd)
    return (empty_4d(tuple(x.shape), x), torch.empty_like(weight, memory_format=torch.contiguous_format),
            vec(in_scale), vec(in_shift), vec(out_scale), vec(out_shift))


def _dw_conv_bn_setup_context(ctx, inputs, output):
    x, weight, in_scale, in_shift, out_scale, out_shift, residual, stride, in_act, out_act, write_out, stats = inputs
    out, mean, _ = output
    # the input and per-channel vectors; y itself only where out is the raw y with batch statistics (the next
    # conv's input, saved by it anyway): its backward then needs no recompute pass. Else y is recomputed.
    raw = write_out and stats and out_scale is None and not out_act and residual is None
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zero tensor is made for it
    ctx.save_for_backward(x, weight, in_scale, in_shift, out_scale, out_shift, mean if stats else None,
                          out if raw else None)
    ctx.cfg = (stride, in_act, out_act, write_out, stats, residual is not None)


def _dw_conv_bn_autograd(ctx, grad_out, grad_mean, grad_var):
    x, weight, in_scale, in_shift, out_scale, out_shift, mean, y = ctx.saved_tensors
    stride, in_act, out_act, write_out, stats, has_res = ctx.cfg
    gx, gw, g_is, g_it, g_os, g_ot = dw_conv_bn_backward(
        grad_out, grad_mean, grad_var, x, weight, in_scale, in_shift, out_scale, out_shift, mean, y,
        stride, in_act, out_act, write_out, stats)
    return (gx, gw, grad_like(g_is, in_scale), grad_like(g_it, in_shift), grad_like(g_os, out_scale),
            grad_like(g_ot, out_shift), grad_out if has_res else None, None, None, None, None, None)


dw_conv_bn.register_autograd(_dw_conv_bn_autograd, setup_context=_dw_conv_bn_setup_context)
