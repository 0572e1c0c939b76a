"""ops/bn_batch_affine.py: a BN layer's (scale, shift) from a tensor's own statistics (scale_shift ->
bn_batch_affine) and the running-statistics update, against nn.BatchNorm2d: values, running statistics and
gradients in fp64, opcheck."""
import copy
import os

import pytest
import torch
import torch.nn as nn

from yolov10_kernels.ops.batchnorm import BatchNormSpec  # noqa: E402
from yolov10_kernels.ops.bn_batch_affine import bn_batch_affine, bn_batch_affine_backward, scale_shift  # noqa: E402
from helpers import assert_close, randomize_bn

# the GPU where there is one (the kernels' CUDA path), else the CPU through the Triton interpreter
DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1" else "cpu"


@pytest.mark.parametrize("momentum,cl", [(0.1, False), (None, True)])
def test_scale_shift_of_a_tensor_matches_batchnorm_fp64(momentum, cl):
    """scale_shift(x, bn, True): x's batch statistics, one op each way; NCHW and channels_last x."""
    x, mine = check_scale_shift(momentum, cl, (3, 5, 4, 7))

    def f(x, w, b):
        bn = BatchNormSpec(w, b, None, None, None, 1e-3, momentum, True)
        return scale_shift(x, bn, True)
    ins = (x.detach().requires_grad_(), mine[0].weight.detach().requires_grad_(),
           mine[0].bias.detach().requires_grad_())
    assert torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-8)


def test_opcheck_bn_batch_affine():
    torch.manual_seed(12)
    x = torch.randn(2, 3, 5, 4, device=DEV)
    w, b = torch.randn(3, device=DEV), torch.randn(3, device=DEV)
    rm, rv, nbt = torch.randn(3, device=DEV), torch.rand(3, device=DEV) + 0.5, torch.tensor(2, device=DEV)
    torch.library.opcheck(bn_batch_affine, (x, w, b, rm, rv, nbt, 1e-3, 0.1, True))
    torch.library.opcheck(bn_batch_affine, (x.to(memory_format=torch.channels_last), None, None, None, None, None,
                                            1e-5, None, False))
    mean, var = torch.randn(3, device=DEV), torch.rand(3, device=DEV) + 0.5
    torch.library.opcheck(bn_batch_affine_backward, (w, b, x, mean, var, w, True, torch.float32, 1e-3))
    torch.library.opcheck(bn_batch_affine_backward, (None, b, x, mean, var, None, False, torch.float32, 1e-3))


def check_scale_shift(momentum, cl, shape):
    """scale_shift(x, bn, True) on a random fp64 x of `shape` against nn.BatchNorm2d: the normalised values, the
    running statistics and the gradients of x, weight and bias. Returns (x, the BN module used)."""
    torch.manual_seed(11)
    x = torch.randn(*shape, dtype=torch.float64, device=DEV)
    x = x.to(memory_format=torch.channels_last) if cl else x
    ref = randomize_bn(nn.Sequential(nn.BatchNorm2d(shape[1], eps=1e-3, momentum=momentum))).double().train().to(DEV)
    mine = copy.deepcopy(ref)
    xr, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
    want = ref(xr)
    scale, shift = scale_shift(xm, mine[0], True)
    got = xm * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    assert_close(got, want, rel=1e-12)
    for (name, b), (_, r) in zip(mine.named_buffers(), ref.named_buffers()):
        assert_close(b, r, rtol=1e-12, atol=1e-12, what=name)
    g = torch.randn_like(want)
    (want * g).sum().backward()
    (got * g).sum().backward()
    assert_close(xm.grad, xr.grad, rel=1e-10, what="x.grad")
    for (name, p), (_, q) in zip(mine.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, q.grad, rel=1e-10, what=name)
    return x, mine
