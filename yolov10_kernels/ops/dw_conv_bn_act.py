"""Op `yolov10_kernels::dw_conv_bn_act(...)` (`dw_conv_bn_act_train` for nn.BatchNorm2d / BatchNormSpec): a chain's
last depthwise layer with its BN on batch statistics in one op: statistics pass, BN affine and running-statistics
update, epilogue pass; one backward (see its section below)."""
from typing import Optional

import torch

from .batchnorm import bn_affine_backward_impl, bn_affine_impl
from .dwconv import (_check_args, _dw_conv_bn_backward_fake, _dw_conv_bn_fake, _dw_forward, _grad_y_pass,
                     _input_grad_pass, _out_hw, _taps)
from .utils import grad_like, op_name, vec

Tensor = torch.Tensor


# ------------------------------------------------------------------------------ the last depthwise layer of a chain
# A chain's last conv normalises with the statistics of its own output, so it runs twice over its input (a
# statistics-only pass, then a pass whose epilogue writes act(BN(y)) (+ residual)). As one op (with the BN's affine
# and running-statistics update between the passes) the two passes share one autograd node: one backward, which
# takes three passes (the epilogue's gradient and its per-channel sums; the statistics' term; grad x and weight)
# where two separate ops would take four, and no gradient sums for the input they would both read.
@torch.library.custom_op(op_name("dw_conv_bn_act"),
                         mutates_args=("running_mean", "running_var", "num_batches_tracked"))
def dw_conv_bn_act(x: Tensor, weight: Tensor, in_scale: Optional[Tensor], in_shift: Optional[Tensor],
                   residual: Optional[Tensor], bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
                   running_mean: Optional[Tensor], running_var: Optional[Tensor],
                   num_batches_tracked: Optional[Tensor], stride: int, in_act: bool, out_act: bool, eps: float,
                   momentum: Optional[float], update: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """out = out_act(BN(depthwise_conv(in_act(x * in_scale + in_shift)))) (+ residual), BN with the batch
    statistics of the conv's output (running statistics updated when `update`): a statistics-only conv pass,
    bn_affine (scale, shift and the running-statistics update), then the epilogue pass. No autograd of its own
    (it mutates the running statistics): dw_conv_bn_act_train differentiates it.

    Arguments:
        x: (N, C, H, W), fp32/fp16/bf16/fp64, NCHW or channels_last; on a CUDA device, or on the CPU only under
            TRITON_INTERPRET=1.
        weight: (C, 1, k, k) or (C, k, k), k in 3, 5, 7; a float dtype; x's device.
        in_scale, in_shift: C elements each, a float dtype, x's device; both or neither. None: no input affine.
        residual: (N, C, OH, OW), a float dtype, x's device, any strides; added after out_act. None: no residual.
        bn_weight, bn_bias: (C,) the BN's gamma / beta, any float dtype, x's device. None: 1 / 0.
        running_mean, running_var: (C,) the BN's running statistics, updated in place when `update` (their dtype
            kept). None: no running statistics (no update).
        num_batches_tracked: () int64 counter, incremented when updating. None: not counted.
        stride: 1 or 2; OH = (H - 1) // stride + 1 (likewise OW).
        in_act, out_act: SiLU (True) or identity (False) after the input affine / the BN.
        eps: the BN's eps. momentum: its momentum; None: the cumulative moving average.
        update: update the running statistics (the BN's training mode).

    Returns:
        out: (N, C, OH, OW) in x's dtype, channels_last when x is (else NCHW).
        mean, var: (C,) batch mean and biased variance of the conv's output; scale, shift: (C,) the BN as
            y * scale + shift; all four in the accumulation dtype (fp32, fp64 for fp64 x).

    Raises:
        TypeError: x, weight, in_scale, in_shift or residual is not a tensor, or not fp32/fp16/bf16/fp64.
        ValueError: x or residual not 4-D; weight not (C, 1, k, k) / (C, k, k) with k in 3, 5, 7; stride not 1
            or 2; an input affine vector without C elements, or without its partner; a tensor on another device
            than x; residual not of the output's shape.
        RuntimeError: Triton cannot be imported; a CPU x without TRITON_INTERPRET=1, a CUDA x with it, or another
            device type (utils.check_device).
    """
    _check_args(x, weight, in_scale, in_shift, None, None, residual, stride)
    _, mean, var = _dw_forward(x, weight, in_scale, in_shift, None, None, None, stride, in_act, False, False, True)
    N, _, H, W = x.shape
    K = weight.shape[-1]
    OH, OW = _out_hw(H, W, K, stride)
    count = N * OH * OW
    scale, shift = bn_affine_impl(mean, var, bn_weight, bn_bias, running_mean, running_var, num_batches_tracked,
                                  float(count), eps, momentum, update)
    out = _dw_forward(x, weight, in_scale, in_shift, scale, shift, residual, stride, in_act, out_act, True, False)[0]
    return out, mean, var, scale, shift


@dw_conv_bn_act.register_fake
def _dw_conv_bn_act_fake(x, weight, in_scale, in_shift, residual, bn_weight, bn_bias, running_mean, running_var,
                         num_batches_tracked, stride, in_act, out_act, eps, momentum, update):
    out = _dw_conv_bn_fake(x, weight, in_scale, in_shift, None, None, residual, stride, in_act, out_act, True, True)
    mean = out[1]
    return out[0], mean, torch.empty_like(mean), torch.empty_like(mean), torch.empty_like(mean)


@torch.library.custom_op(op_name("dw_conv_bn_act_backward"), mutates_args=())
def dw_conv_bn_act_backward(grad_out: Tensor, x: Tensor, weight: Tensor, in_scale: Optional[Tensor],
                            in_shift: Optional[Tensor], bn_weight: Optional[Tensor], has_bias: bool,
                            bias_dtype: torch.dtype, mean: Tensor, var: Tensor, scale: Tensor, shift: Tensor,
                            stride: int, in_act: bool, out_act: bool, eps: float
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward of dw_conv_bn_act: (grad x, grad weight, grad in_scale, grad in_shift, grad BN weight, grad BN
    bias); empty where absent. Three passes: the epilogue's gradient and its per-channel sums (y recomputed); the
    statistics' term (after bn_affine_backward); grad x and weight. Residual's gradient is grad_out itself
    (passed on by the autograd function; not returned here).

    Arguments:
        grad_out: (N, C, OH, OW), the gradient of out, a float dtype, x's device, any strides.
        x, weight, in_scale, in_shift: the forward's (see dw_conv_bn_act); x on a CUDA device, or the CPU only
            under TRITON_INTERPRET=1; the rest on x's device; None where the forward had None.
        bn_weight: (C,) the BN's gamma (its gradient comes in its dtype); None: no BN weight.
        has_bias, bias_dtype: whether the BN has a bias, and its dtype (of the bias gradient).
        mean, var, scale, shift: (C,) the forward's outputs, in the accumulation dtype (fp32, fp64 for fp64 x).
        stride, in_act, out_act, eps: the forward's.

    Returns:
        grad x: (N, C, H, W) in x's dtype, channels_last when x is (else NCHW).
        grad weight: weight's shape and dtype, contiguous.
        grad in_scale, grad in_shift: (C,) in the accumulation dtype; (0,) where not given.
        grad BN weight: (C,) in bn_weight's dtype, (0,) without one; grad BN bias: (C,) in bias_dtype, (0,)
            without one.

    Raises:
        RuntimeError: only bn_affine_backward's device check of mean (utils.check_device: no Triton; a CPU
            tensor without TRITON_INTERPRET=1, a CUDA one with it, another device type). No other checks.
    """
    w = _taps(weight)
    si, ti = vec(in_scale), vec(in_shift)
    g, g_scale, g_shift = _grad_y_pass(grad_out, x, w, si, ti, scale, shift, None, None, None, stride, in_act,
                                       out_act)
    g_mean, g_var, g_bw, g_bb = bn_affine_backward_impl(g_scale, g_shift, mean, var, bn_weight, has_bias, bias_dtype,
                                                        eps)
    g = _grad_y_pass(g, x, w, si, ti, None, None, mean, g_mean, g_var, stride, in_act, False, out=g)[0]
    return (*_input_grad_pass(g, x, weight, w, si, ti, stride, in_act), g_bw, g_bb)


@dw_conv_bn_act_backward.register_fake
def _dw_conv_bn_act_backward_fake(grad_out, x, weight, in_scale, in_shift, bn_weight, has_bias, bias_dtype, mean,
                                  var, scale, shift, stride, in_act, out_act, eps):
    gx, gw, g_is, g_it, _, _ = _dw_conv_bn_backward_fake(grad_out, None, None, x, weight, in_scale, in_shift, None,
                                                         None, mean, None, stride, in_act, out_act, True, False)
    C = x.shape[1]
    return (gx, gw, g_is, g_it,
            x.new_empty(C if bn_weight is not None else 0, dtype=bn_weight.dtype if bn_weight is not None else x.dtype),
            x.new_empty(C if has_bias else 0, dtype=bias_dtype))


class _DwConvBnAct(torch.autograd.Function):
    """Autograd of dw_conv_bn_act (an op that updates running statistics cannot register its own)."""

    @staticmethod
    def forward(ctx, x, weight, in_scale, in_shift, residual, bn, stride, in_act, out_act, bn_weight, bn_bias):
        out, mean, var, scale, shift = dw_conv_bn_act(
            x, weight, in_scale, in_shift, residual, bn_weight, bn_bias, bn.running_mean, bn.running_var,
            bn.num_batches_tracked, stride, in_act, out_act, float(bn.eps), bn.momentum, bool(bn.training))
        ctx.save_for_backward(x, weight, in_scale, in_shift, bn_weight, mean, var, scale, shift)
        ctx.cfg = (stride, in_act, out_act, float(bn.eps), residual is not None, bn_bias is not None,
                   bn_bias.dtype if bn_bias is not None else mean.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, in_scale, in_shift, bn_weight, mean, var, scale, shift = ctx.saved_tensors
        stride, in_act, out_act, eps, has_res, has_bias, bias_dtype = ctx.cfg
        gx, gw, g_is, g_it, g_bw, g_bb = dw_conv_bn_act_backward(
            grad_out, x, weight, in_scale, in_shift, bn_weight, has_bias, bias_dtype, mean, var, scale, shift,
            stride, in_act, out_act, eps)
        return (gx, gw, grad_like(g_is, in_scale), grad_like(g_it, in_shift), grad_out if has_res else None,
                None, None, None, None, g_bw if bn_weight is not None else None, g_bb if has_bias else None)


def dw_conv_bn_act_train(x, weight, in_scale, in_shift, residual, bn, stride, in_act, out_act):
    """The last depthwise layer of a training chain with its BN on batch statistics (see dw_conv_bn_act);
    differentiable in x, weight, the input affine, residual and the BN's weight and bias.

    Arguments:
        x: (N, C, H, W), fp32/fp16/bf16/fp64, NCHW or channels_last; on a CUDA device, or on the CPU only under
            TRITON_INTERPRET=1.
        weight: (C, 1, k, k) or (C, k, k), k in 3, 5, 7; x's device.
        in_scale, in_shift: C elements each, x's device; both or neither. None: no input affine.
        residual: (N, C, OH, OW), x's device; None: no residual.
        bn: an nn.BatchNorm2d or a BatchNormSpec (its weight, bias, running statistics, eps, momentum; its
            .training decides whether the running statistics are updated).
        stride: 1 or 2. in_act, out_act: SiLU (True) or identity (False) after the input affine / the BN.

    Returns:
        out: (N, C, OH, OW), OH = (H - 1) // stride + 1 (likewise OW), in x's dtype, channels_last when x is.
    """
    return _DwConvBnAct.apply(x, weight, in_scale, in_shift, residual, bn, stride, in_act, out_act, bn.weight,
                              bn.bias)
