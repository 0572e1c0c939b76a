"""ops/batchnorm.py: a BN layer's (scale, shift) from batch statistics (bn_affine) and the running-statistics update,
against nn.BatchNorm2d: values, running statistics and gradients in fp64 (the ops' float scalars travel as fp32
hi + lo parts), opcheck. From a tensor's own statistics: tests/test_bn_batch_affine.py."""
import copy
import os

import pytest
import torch
import torch.nn as nn

from yolov10_kernels.ops.batchnorm import (BatchNormSpec, batch_scale_shift, bn_affine,  # noqa: E402
                                           bn_affine_backward)
from helpers import assert_close, randomize_bn

# the GPU where there is one (the kernels' CUDA path), else the CPU through the Triton interpreter
DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1" else "cpu"


@pytest.mark.parametrize("momentum", [0.1, None])
def test_bn_affine_matches_batchnorm_fp64(momentum):
    """(scale, shift), the running-statistics update and the gradients of one BN layer against nn.BatchNorm2d,
    in fp64 (the op's scalars travel as fp32 hi + lo parts)."""
    torch.manual_seed(10)
    y = torch.randn(3, 5, 4, 3, dtype=torch.float64, device=DEV)
    ref = randomize_bn(nn.Sequential(nn.BatchNorm2d(5, eps=1e-3, momentum=momentum))).double().train().to(DEV)
    mine = copy.deepcopy(ref)
    want = ref(y)
    var, mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
    scale, shift = batch_scale_shift(mine[0], mean, var, y.numel() // 5, True)
    assert_close(y * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), want, rel=1e-12)
    for (name, b), (_, r) in zip(mine.named_buffers(), ref.named_buffers()):
        assert_close(b, r, rtol=1e-12, atol=1e-12, what=name)
    gp = [p.detach().clone().requires_grad_() for p in (mean, var, mine[0].weight, mine[0].bias)]

    def f(mean, var, w, b):
        bn = BatchNormSpec(w, b, None, None, None, 1e-3, momentum, False)
        return batch_scale_shift(bn, mean, var, 60, False)
    gp[1] = gp[1].detach().abs().add(0.5).requires_grad_()
    assert torch.autograd.gradcheck(f, tuple(gp), eps=1e-6, atol=1e-8)


def test_opcheck_bn_affine():
    """The BN affine (it updates running statistics in place) and its backward op: schema (mutation declared),
    fake implementations, torch.compile."""
    torch.manual_seed(9)
    s, t, bw, bb, mean = (torch.randn(3, device=DEV) for _ in range(5))
    var = torch.rand(3, device=DEV) + 0.5
    rm, rv, nbt = torch.randn(3, device=DEV), torch.rand(3, device=DEV) + 0.5, torch.tensor(4, device=DEV)
    torch.library.opcheck(bn_affine, (mean, var, bw, bb, rm, rv, nbt, 60.0, 1e-3, 0.03, True))
    torch.library.opcheck(bn_affine, (mean, var, None, None, None, None, None, 60.0, 1e-3, None, False))
    torch.library.opcheck(bn_affine_backward, (s, t, mean, var, bw, True, torch.float32, 1e-3))
    torch.library.opcheck(bn_affine_backward, (None, t, mean, var, None, False, torch.float32, 1e-3))
