"""Op `yolov10_kernels::dw_conv_bn_act(...)` (`dw_conv_bn_act_train` for nn.BatchNorm2d / BatchNormSpec): a chain's
last depthwise layer with its BN on batch statistics in one op: statistics pass, BN affine and running-statistics
update, epilogue pass; one backward (see its section below)."""
from typing import Optional

import torch

from .batchnorm import affine_from_stats, affine_grads
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
    statistics of the conv's output (running statistics updated when `update`). Returns (out, mean, var, scale,
    shift), the last four per channel in the accumulation dtype."""
    _check_args(x, weight, in_scale, in_shift, None, None, residual, stride)
    _, mean, var = _dw_forward(x, weight, in_scale, in_shift, None, None, None, stride, in_act, False, False, True)
    N, _, H, W = x.shape
    K = weight.shape[-1]
    OH, OW = _out_hw(H, W, K, stride)
    count = N * OH * OW
    scale, shift = affine_from_stats(mean, var, bn_weight, bn_bias, running_mean, running_var, num_batches_tracked,
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
    """(grad x, grad weight, grad in_scale, grad in_shift, grad BN weight, grad BN bias); empty where absent."""
    w = _taps(weight)
    si, ti = vec(in_scale), vec(in_shift)
    g, g_scale, g_shift = _grad_y_pass(grad_out, x, w, si, ti, scale, shift, None, None, None, stride, in_act,
                                       out_act)
    g_mean, g_var, g_bw, g_bb = affine_grads(g_scale, g_shift, mean, var, bn_weight, has_bias, bias_dtype, eps)
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
    differentiable in x, weight, the input affine, residual and the BN's weight and bias. bn: an nn.BatchNorm2d
    or a BatchNormSpec."""
    return _DwConvBnAct.apply(x, weight, in_scale, in_shift, residual, bn, stride, in_act, out_act, bn.weight,
                              bn.bias)
