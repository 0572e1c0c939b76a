"""Op `yolov10_kernels::dw_repvgg_bn(...)` (`dw_repvgg_train`): a RepVGGDW (a k x k and a centred smaller depthwise
conv of one input, each with a BN on batch statistics, summed) in training as one op: both branches' statistics
from one pass, their BN affines, the merged-weight conv; one backward (see the last section)."""
from typing import Optional

import torch

from .batchnorm import bn_affine_backward_impl, bn_affine_impl
from .dwconv import _check_args, _dw_dual_pass, _dw_forward, _input_grad_pass, _taps
from .utils import acc_dtype, empty, empty_4d, grad_like, next_pow2, on_device, op_name, tl_acc, triton, vec

if triton is not None:
    from .dwconv_kernels import _repvgg_merge_kernel

Tensor = torch.Tensor


# ------------------------------------------------------------------------------------------- a RepVGGDW in training
# Its two branches (a k x k and a centred k2 x k2 depthwise conv of one input, each with a BN on batch statistics,
# summed) as one op. Forward: one statistics-only pass over the staged input gives both branches' statistics; a BN
# affine per branch; one small kernel merges the BN-scaled weights w * s + pad(w2) * s2 and the shift; one conv
# pass writes z = conv(a, merged) (the next conv adds the shift and applies the act in its prologue). Backward: one
# pass recomputes both raw outputs (written) with the BN scales' gradients (sum gz * y, sum gz * y2), the BN
# affine backward per branch, and one pass over input positions forms each branch's gradient s * gz + statistics
# term on the fly from gz and the recomputed outputs: grad x and both weights' gradients. Per step that is two
# reads of the input, one of gz and the input-gradient sum fewer than two statistics-only ops plus a conv op.
def _repvgg_merge(weight, weight2, scale, scale2, shift, shift2):
    C, K, K2 = weight.shape[0], weight.shape[-1], weight2.shape[-1]
    wc = empty((C, 1, K, K), scale)
    ones, out_shift = empty(C, scale), empty(C, scale)
    block = min(max(next_pow2(C), 16), 32)  # a [channels x taps] tile: wider spills
    with on_device(scale):
        _repvgg_merge_kernel[(triton.cdiv(C, block),)](_taps(weight), _taps(weight2), scale, scale2, shift, shift2, wc,
                                                       ones, out_shift, C, K=K, K2=K2, KK_PAD=next_pow2(K * K),
                                                       ACC=tl_acc(scale.dtype), BLOCK_C=block)
    return wc, ones, out_shift


def _check_repvgg(x, weight, weight2, in_scale, in_shift):
    _check_args(x, weight, in_scale, in_shift, None, None, None, 1)
    _check_args(x, weight2, None, None, None, None, None, 1)
    if weight2.shape[-1] > weight.shape[-1]:
        raise ValueError(f"weight2 must be the smaller kernel: got {tuple(weight.shape)} and {tuple(weight2.shape)}")


@torch.library.custom_op(op_name("dw_repvgg_bn"),
                         mutates_args=("running_mean", "running_var", "num_batches_tracked", "running_mean2",
                                       "running_var2", "num_batches_tracked2"))
def dw_repvgg_bn(x: Tensor, weight: Tensor, weight2: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor],
                 bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], running_mean: Optional[Tensor],
                 running_var: Optional[Tensor], num_batches_tracked: Optional[Tensor],
                 bn_weight2: Optional[Tensor], bn_bias2: Optional[Tensor], running_mean2: Optional[Tensor],
                 running_var2: Optional[Tensor], num_batches_tracked2: Optional[Tensor], in_act: bool, eps: float,
                 momentum: Optional[float], eps2: float, momentum2: Optional[float], update: bool
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """z = depthwise_conv(a, w * s + pad(w2 * s2)) with a = in_act(x * in_scale + in_shift) and (s, t), (s2, t2)
    the BN affines of the two branches' batch statistics (running statistics updated when `update`): the
    RepVGGDW's pre-activation is z * ones + shift, shift = t + t2. Stride 1. One statistics-only pass gives both
    branches' statistics, a bn_affine per branch, one small kernel merges the weights, one conv pass writes z. No
    autograd of its own (it mutates the running statistics): dw_repvgg_train differentiates it.

    Arguments:
        x: (N, C, H, W), fp32/fp16/bf16/fp64, NCHW or channels_last; on a CUDA device, or on the CPU only under
            TRITON_INTERPRET=1.
        weight: (C, 1, k, k) or (C, k, k), the large kernel, k in 3, 5, 7; a float dtype; x's device.
        weight2: (C, 1, k2, k2) or (C, k2, k2), k2 in 3, 5, 7 and k2 <= k, centred in weight's taps; x's device.
        in_scale, in_shift: C elements each, a float dtype, x's device; both or neither. None: no input affine.
        bn_weight, bn_bias / bn_weight2, bn_bias2: (C,) the gamma / beta of weight's / weight2's BN, a float
            dtype, x's device. None: 1 / 0.
        running_mean, running_var / running_mean2, running_var2: (C,) each BN's running statistics, updated in
            place when `update`. None: none (no update).
        num_batches_tracked / num_batches_tracked2: () int64 counters, incremented when updating; None: none.
        in_act: SiLU (True) or identity (False) after the input affine.
        eps, momentum / eps2, momentum2: each BN's eps and momentum (None: the cumulative moving average).
        update: update both BNs' running statistics (training mode).

    Returns:
        z: (N, C, H, W) in x's dtype, channels_last when x is (else NCHW).
        ones: (C,) ones (the unit scale the next conv's prologue takes); shift: (C,) t + t2.
        mean, var, mean2, var2: (C,) each branch's batch mean and biased variance; scale, scale2: (C,) s, s2.
        All but z in the accumulation dtype (fp32, fp64 for fp64 x).

    Raises:
        TypeError: x, weight, weight2, in_scale or in_shift is not a tensor, or not fp32/fp16/bf16/fp64.
        ValueError: x not 4-D; weight or weight2 not (C, 1, k, k) / (C, k, k) with k in 3, 5, 7; weight2's kernel
            larger than weight's; an input affine vector without C elements, or without its partner; a tensor on
            another device than x.
        RuntimeError: Triton cannot be imported; a CPU x without TRITON_INTERPRET=1, a CUDA x with it, or another
            device type (utils.check_device).
    """
    _check_repvgg(x, weight, weight2, in_scale, in_shift)
    si, ti = vec(in_scale), vec(in_shift)
    mean, var, mean2, var2 = _dw_dual_pass(x, weight, weight2, si, ti, in_act)
    count = float(x.shape[0] * x.shape[2] * x.shape[3])
    scale, shift = bn_affine_impl(mean, var, bn_weight, bn_bias, running_mean, running_var, num_batches_tracked, count,
                                  eps, momentum, update)
    scale2, shift2 = bn_affine_impl(mean2, var2, bn_weight2, bn_bias2, running_mean2, running_var2,
                                    num_batches_tracked2, count, eps2, momentum2, update)
    wc, ones, out_shift = _repvgg_merge(weight, weight2, scale, scale2, shift, shift2)
    z = _dw_forward(x, wc, in_scale, in_shift, None, None, None, 1, in_act, False, True, False)[0]
    return z, ones, out_shift, mean, var, mean2, var2, scale, scale2


@dw_repvgg_bn.register_fake
def _dw_repvgg_bn_fake(x, weight, weight2, in_scale, in_shift, bn_weight, bn_bias, running_mean, running_var,
                       num_batches_tracked, bn_weight2, bn_bias2, running_mean2, running_var2, num_batches_tracked2,
                       in_act, eps, momentum, eps2, momentum2, update):
    _check_repvgg(x, weight, weight2, in_scale, in_shift)
    return (empty_4d(tuple(x.shape), x), *(x.new_empty(x.shape[1], dtype=acc_dtype(x)) for _ in range(8)))


@torch.library.custom_op(op_name("dw_repvgg_bn_backward"), mutates_args=())
def dw_repvgg_bn_backward(grad_z: Tensor, grad_shift: Optional[Tensor], x: Tensor, weight: Tensor, weight2: Tensor,
                          in_scale: Optional[Tensor], in_shift: Optional[Tensor], mean: Tensor, var: Tensor,
                          scale: Tensor, mean2: Tensor, var2: Tensor, scale2: Tensor,
                          bn_weight: Optional[Tensor], bn_weight2: Optional[Tensor], has_bias: bool,
                          bias_dtype: torch.dtype, has_bias2: bool, bias_dtype2: torch.dtype, eps: float, eps2: float,
                          in_act: bool
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad x, grad weight, grad weight2, grad in_scale, grad in_shift, grad BN weight, grad BN bias, grad BN2
    weight, grad BN2 bias); empty where absent. The branches' raw outputs are recomputed (with the BN scales'
    gradients, sum grad_z * y) rather than saved: a training step holds less, and moves fewer bytes in all. Then
    bn_affine_backward per branch, and one pass over input positions for grad x and both weights' gradients.

    Arguments:
        grad_z: (N, C, H, W), the gradient of z, a float dtype, x's device, any strides.
        grad_shift: (C,) the gradient of shift (both branches' BN shifts receive it), accumulation dtype; None:
            shift got no gradient.
        x, weight, weight2, in_scale, in_shift: the forward's (see dw_repvgg_bn); x on a CUDA device, or the CPU
            only under TRITON_INTERPRET=1; the rest on x's device; None where the forward had None.
        mean, var, scale / mean2, var2, scale2: (C,) the forward's outputs per branch, in the accumulation dtype
            (fp32, fp64 for fp64 x).
        bn_weight, bn_weight2: (C,) each BN's gamma (its gradient comes in its dtype); None: none.
        has_bias, bias_dtype / has_bias2, bias_dtype2: whether each BN has a bias, and its dtype.
        eps, eps2, in_act: the forward's.

    Returns:
        grad x: (N, C, H, W) in x's dtype, channels_last when x is (else NCHW).
        grad weight, grad weight2: each weight's shape and dtype, contiguous.
        grad in_scale, grad in_shift: (C,) in the accumulation dtype; (0,) where not given.
        grad BN weight, grad BN2 weight: (C,) in that gamma's dtype, (0,) without one; grad BN bias, grad BN2 bias:
            (C,) in bias_dtype / bias_dtype2, (0,) without one.

    Raises:
        RuntimeError: only bn_affine_backward's device check of mean / mean2 (utils.check_device: no Triton; a CPU
            tensor without TRITON_INTERPRET=1, a CUDA one with it, another device type). No other checks.
    """
    si, ti = vec(in_scale), vec(in_shift)
    y, y2, g_scale, g_scale2 = _dw_dual_pass(x, weight, weight2, si, ti, in_act, grad_out=grad_z)
    g_mean, g_var, g_bw, g_bb = bn_affine_backward_impl(g_scale, grad_shift, mean, var, bn_weight, has_bias, bias_dtype,
                                                        eps)
    g_mean2, g_var2, g_bw2, g_bb2 = bn_affine_backward_impl(g_scale2, grad_shift, mean2, var2, bn_weight2, has_bias2,
                                                            bias_dtype2, eps2)
    gx, gw, gw2, g_is, g_it = _input_grad_pass(grad_z, x, weight, _taps(weight), si, ti, 1, in_act, y, mean, g_mean,
                                               g_var, scale, (weight2, y2, mean2, g_mean2, g_var2, scale2))
    return gx, gw, gw2, g_is, g_it, g_bw, g_bb, g_bw2, g_bb2


@dw_repvgg_bn_backward.register_fake
def _dw_repvgg_bn_backward_fake(grad_z, grad_shift, x, weight, weight2, in_scale, in_shift, mean, var, scale,
                                mean2, var2, scale2, bn_weight, bn_weight2, has_bias, bias_dtype, has_bias2,
                                bias_dtype2, eps, eps2, in_act):
    C = x.shape[1]
    sd = acc_dtype(x)

    def like(t, own_dtype=False):
        return x.new_empty(C if t is not None else 0, dtype=t.dtype if own_dtype and t is not None else sd)
    return (empty_4d(tuple(x.shape), x), torch.empty_like(weight, memory_format=torch.contiguous_format),
            torch.empty_like(weight2, memory_format=torch.contiguous_format), like(in_scale), like(in_shift),
            like(bn_weight, True), x.new_empty(C if has_bias else 0, dtype=bias_dtype), like(bn_weight2, True),
            x.new_empty(C if has_bias2 else 0, dtype=bias_dtype2))


class _DwRepVGG(torch.autograd.Function):
    """Autograd of dw_repvgg_bn (an op that updates running statistics cannot register its own)."""

    @staticmethod
    def forward(ctx, x, weight, weight2, in_scale, in_shift, bn, bn2, in_act, bn_weight, bn_bias, bn_weight2,
                bn_bias2):
        z, ones, shift, mean, var, mean2, var2, scale, scale2 = dw_repvgg_bn(
            x, weight, weight2, in_scale, in_shift, bn_weight, bn_bias, bn.running_mean, bn.running_var,
            bn.num_batches_tracked, bn_weight2, bn_bias2, bn2.running_mean, bn2.running_var, bn2.num_batches_tracked,
            in_act, float(bn.eps), bn.momentum, float(bn2.eps), bn2.momentum, bool(bn.training))
        ctx.save_for_backward(x, weight, weight2, in_scale, in_shift, mean, var, scale, mean2, var2, scale2,
                              bn_weight, bn_weight2)
        # each BN its own bias presence and dtype (a RepVGGDW's BNs may differ in affine)
        ctx.cfg = (in_act, float(bn.eps), float(bn2.eps), *((b is not None, mean.dtype if b is None else b.dtype)
                                                            for b in (bn_bias, bn_bias2)))
        ctx.mark_non_differentiable(ones)
        return z, ones, shift

    @staticmethod
    def backward(ctx, grad_z, _grad_ones, grad_shift):
        x, weight, weight2, in_scale, in_shift, mean, var, scale, mean2, var2, scale2, bn_w, bn_w2 = ctx.saved_tensors
        in_act, eps, eps2, (has_bias, bias_dtype), (has_bias2, bias_dtype2) = ctx.cfg
        gx, gw, gw2, g_is, g_it, g_bw, g_bb, g_bw2, g_bb2 = dw_repvgg_bn_backward(
            grad_z, grad_shift, x, weight, weight2, in_scale, in_shift, mean, var, scale, mean2, var2, scale2, bn_w,
            bn_w2, has_bias, bias_dtype, has_bias2, bias_dtype2, eps, eps2, in_act)
        return (gx, gw, gw2, grad_like(g_is, in_scale), grad_like(g_it, in_shift), None, None, None,
                g_bw if bn_w is not None else None, g_bb if has_bias else None,
                g_bw2 if bn_w2 is not None else None, g_bb2 if has_bias2 else None)


def dw_repvgg_train(x, weight, in_scale, in_shift, weight2, bn, bn2, in_act):
    """A RepVGGDW in a training chain with both BNs on batch statistics (see dw_repvgg_bn): (z, ones, shift),
    the pre-activation being z * ones + shift; differentiable in x, both weights, the input affine and both BNs'
    weights and biases.

    Arguments:
        x: (N, C, H, W), fp32/fp16/bf16/fp64, NCHW or channels_last; on a CUDA device, or on the CPU only under
            TRITON_INTERPRET=1.
        weight: (C, 1, k, k) or (C, k, k), k in 3, 5, 7 (the large kernel); x's device.
        in_scale, in_shift: C elements each, x's device; both or neither. None: no input affine.
        weight2: (C, 1, k2, k2) or (C, k2, k2), k2 <= k (centred); x's device.
        bn, bn2: nn.BatchNorm2d or BatchNormSpec (bn: the large kernel's); bn.training decides whether both
            BNs' running statistics are updated.
        in_act: SiLU (True) or identity (False) after the input affine.

    Returns:
        z: (N, C, H, W) in x's dtype, channels_last when x is; ones (not differentiable), shift: (C,) in the
        accumulation dtype (fp32, fp64 for fp64 x).
    """
    return _DwRepVGG.apply(x, weight, weight2, in_scale, in_shift, bn, bn2, in_act, bn.weight, bn.bias, bn2.weight,
                           bn2.bias)
