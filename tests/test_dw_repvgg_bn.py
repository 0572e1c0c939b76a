"""yolov10_kernels.ops.dw_repvgg_bn (a RepVGGDW in training as one op) and its backward op: opcheck, float64
gradcheck, and BNs that differ in affine."""
import dataclasses
import os

import pytest
import torch

pytest.importorskip("triton")

import torch.nn as nn  # noqa: E402

from yolov10_kernels.ops.batchnorm import BatchNormSpec  # noqa: E402
from yolov10_kernels.ops.dw_repvgg_bn import dw_repvgg_bn, dw_repvgg_bn_backward, dw_repvgg_train  # noqa: E402

CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
DEV = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.usefixtures("exact_fp32")


def test_opcheck_dw_repvgg_bn():
    """The RepVGGDW op (both branches' statistics, two BN affines with running-statistics updates, the merged
    conv) and its backward op: schema, fake implementations, torch.compile."""
    torch.manual_seed(15)
    x = torch.randn(2, 3, 5, 4, device=DEV)
    w7, w3 = torch.randn(3, 1, 7, 7, device=DEV), torch.randn(3, 1, 3, 3, device=DEV)
    s, t, bw, bb, bw2, bb2, mean, mean2 = (torch.randn(3, device=DEV) for _ in range(8))
    var, var2 = torch.rand(3, device=DEV) + 0.5, torch.rand(3, device=DEV) + 0.5

    def running():
        return torch.randn(3, device=DEV), torch.rand(3, device=DEV) + 0.5, torch.tensor(4, device=DEV)
    torch.library.opcheck(dw_repvgg_bn, (x, w7, w3, s, t, bw, bb, *running(), bw2, bb2, *running(), True, 1e-3, 0.03,
                                         1e-3, 0.03, True))
    torch.library.opcheck(dw_repvgg_bn, (x.to(memory_format=torch.channels_last), w7, w3, None, None, None, None,
                                         *running(), None, None, *running(), False, 1e-5, None, 1e-5, None, True))
    g = torch.randn(2, 3, 5, 4, device=DEV)
    torch.library.opcheck(dw_repvgg_bn_backward, (g, t, x, w7, w3, s, t, mean, var, s, mean2, var2, t, bw, bw2, True,
                                                  torch.float32, True, torch.float32, 1e-3, 1e-3, True))
    torch.library.opcheck(dw_repvgg_bn_backward, (g, None, x, w7, w3, None, None, mean, var, s, mean2, var2, t, None,
                                                  None, False, torch.float32, False, torch.float32, 1e-5, 1e-5, False))
    torch.library.opcheck(dw_repvgg_bn_backward, (g, t, x, w7, w3, s, t, mean, var, s, mean2, var2, t, bw, None, True,
                                                  torch.float32, False, torch.float64, 1e-3, 1e-3, True))


@pytest.mark.parametrize("k,k2", [(7, 3), (5, 3), (3, 3)])
def test_gradcheck_dw_repvgg_fp64(k, k2):
    """The RepVGGDW op in fp64 (both branches' statistics, the merged weights, the backward's recomputed branch
    outputs and its per-branch statistics terms): every input, weight and BN parameter."""
    torch.manual_seed(16)
    d = dict(dtype=torch.float64, device=DEV)
    x = torch.randn(2, 2, 4, 3, **d, requires_grad=True)
    w, w2 = torch.randn(2, 1, k, k, **d, requires_grad=True), torch.randn(2, 1, k2, k2, **d, requires_grad=True)
    si, ti, bw, bb, bw2, bb2 = (torch.randn(2, **d, requires_grad=True) for _ in range(6))
    bn, bn2 = nn.BatchNorm2d(2).to(**d), nn.BatchNorm2d(2).to(**d)

    def f(x, w, w2, si, ti, bw, bb, bw2, bb2):
        z, ones, shift = dw_repvgg_train(x, w, si, ti, w2, dataclasses.replace(BatchNormSpec.of(bn), weight=bw, bias=bb),
                                         dataclasses.replace(BatchNormSpec.of(bn2), weight=bw2, bias=bb2), True)
        return z, z * ones.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    assert torch.autograd.gradcheck(f, (x, w, w2, si, ti, bw, bb, bw2, bb2), eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("affine", [(True, False), (False, True)], ids=["bn2-no-affine", "bn-no-affine"])
def test_bns_that_differ_in_affine(affine):
    """Each BN's bias presence and dtype are its own (they were taken from the first BN for both: a first BN with
    a bias and a second without gave the second a bias gradient, which autograd rejects): values against torch,
    and float64 gradcheck."""
    import torch.nn.functional as F
    torch.manual_seed(18)
    d = dict(dtype=torch.float64, device=DEV)
    x = torch.randn(2, 3, 5, 4, **d, requires_grad=True)
    w, w2 = torch.randn(3, 1, 7, 7, **d, requires_grad=True), torch.randn(3, 1, 3, 3, **d, requires_grad=True)
    bns = [nn.BatchNorm2d(3, affine=a).to(**d) for a in affine]
    for bn in bns:
        if bn.affine:
            bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-0.5, 0.5)
    params = [p for bn in bns for p in bn.parameters()]

    def ours(x, w, w2, *ps):
        z, ones, shift = dw_repvgg_train(x, w, None, None, w2, BatchNormSpec.of(bns[0]), BatchNormSpec.of(bns[1]),
                                         False)
        return z * ones.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def reference(x, w, w2):
        ys = [F.conv2d(x, k, padding=k.shape[-1] // 2, groups=3) for k in (w, w2)]
        return sum(F.batch_norm(y, None, None, bn.weight, bn.bias, True, 0.0, bn.eps) for y, bn in zip(ys, bns))
    got, want = ours(x, w, w2, *params), reference(x, w, w2)
    assert (got - want).abs().max().item() < 1e-9
    grads = torch.autograd.grad(got.sum(), [x, w, w2, *params])
    wants = torch.autograd.grad(want.sum(), [x, w, w2, *params])
    for g, r in zip(grads, wants):
        assert (g - r).abs().max().item() < 1e-8 * max(1.0, r.abs().max().item())
    assert torch.autograd.gradcheck(ours, (x, w, w2, *params), eps=1e-6, atol=1e-7, fast_mode=True)
