"""yolov10_kernels.ops.dwconv's dw_conv_bn and its backward op: float64 gradcheck and opcheck (the
chains built on it: tests/test_chain_train.py)."""
import os

import pytest
import torch

pytest.importorskip("triton")

from yolov10_kernels.ops.dwconv import dw_conv_bn, dw_conv_bn_backward  # noqa: E402

CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
DEV = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.usefixtures("exact_fp32")


def test_gradcheck_dw_op_fp64():
    torch.manual_seed(4)
    d = dict(dtype=torch.float64, device=DEV)
    x = torch.randn(1, 2, 4, 3, **d, requires_grad=True)
    w = torch.randn(2, 1, 3, 3, **d, requires_grad=True)
    si, ti, so, to = (torch.randn(2, **d, requires_grad=True) for _ in range(4))
    res = torch.randn(1, 2, 2, 2, **d, requires_grad=True)

    def f(x, w, si, ti, so, to, res):
        _, mean, var = dw_conv_bn(x, w, si, ti, None, None, None, 2, True, False, False, True)
        out, _, _ = dw_conv_bn(x, w, si, ti, so, to, res, 2, True, True, True, False)
        return out, mean, var
    assert torch.autograd.gradcheck(f, (x, w, si, ti, so, to, res), eps=1e-6, atol=1e-7, fast_mode=True)

    def raw(x, w, si, ti):  # the raw output and its statistics from one op: the backward reads the saved output
        return dw_conv_bn(x, w, si, ti, None, None, None, 1, True, False, True, True)
    assert torch.autograd.gradcheck(raw, (x, w, si, ti), eps=1e-6, atol=1e-7, fast_mode=True)


def test_opcheck_dw_conv_bn():
    torch.manual_seed(7)
    x = torch.randn(2, 3, 5, 4, device=DEV, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, device=DEV, requires_grad=True)
    s, t, so, to = (torch.randn(3, device=DEV, requires_grad=True) for _ in range(4))
    r = torch.randn(2, 3, 3, 2, device=DEV, requires_grad=True)
    torch.library.opcheck(dw_conv_bn, (x, w, s, t, None, None, None, 1, True, False, True, True))
    torch.library.opcheck(dw_conv_bn, (x.detach().to(memory_format=torch.channels_last).requires_grad_(), w, s, t,
                                       so, to, r, 2, True, True, True, False))
    g = torch.randn(2, 3, 5, 4, device=DEV)
    gm, gv = torch.randn(3, device=DEV), torch.randn(3, device=DEV)
    mean = torch.randn(3, device=DEV)
    for y in (None, torch.randn(2, 3, 5, 4, device=DEV)):  # y: the saved raw output (no recompute pass)
        torch.library.opcheck(dw_conv_bn_backward, (g, gm, gv, x.detach(), w.detach(), s.detach(), t.detach(), None,
                                                    None, mean, y, 1, True, False, True, True))
