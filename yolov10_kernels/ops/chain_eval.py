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

The ops, one file each: dw_pw_infer.py, dw_pw_pw_infer.py, pw_dw_infer.py, dw_pw_dw_infer.py; the kernels,
configs and prunes: chain_eval_kernels.py; the folded chains and the ops' shared checks: folded.py.

Each op is a torch.library custom_op with a fake (meta) implementation, so it works under torch.compile and
torch.export (as an opaque op). custom_op rather than triton_op: under TRITON_INTERPRET=1 (the CPU tests)
wrap_triton hands back the bare interpreted kernel, which then runs on FakeTensors during AOT tracing.
These ops have no autograd: training goes through chain_train.py, the train-mode half of the pair.
"""
import torch

from .dw_pw_dw_infer import _dw_pw_dw_infer, dw_pw_dw_infer
from .dw_pw_infer import _dw_pw_infer, dw_pw_infer
from .dw_pw_pw_infer import _dw_pw_pw_infer, dw_pw_pw_infer
from .pw_dw_infer import _pw_dw_infer, pw_dw_infer
from .utils import is_channels_last


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
