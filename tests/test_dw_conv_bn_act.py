"""yolov10_kernels.ops.dw_conv_bn_act (a chain's last depthwise layer with its BN in one op) and its backward op."""
import os

import pytest
import torch

pytest.importorskip("triton")

from yolov10_kernels.ops.dw_conv_bn_act import dw_conv_bn_act, dw_conv_bn_act_backward  # noqa: E402

CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
DEV = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.usefixtures("exact_fp32")


def test_opcheck_dw_conv_bn_act():
    """The last depthwise layer (it updates running statistics in place) and its backward op: schema (mutation
    declared), fake implementations, torch.compile."""
    torch.manual_seed(9)
    x = torch.randn(2, 3, 5, 4, device=DEV)
    w = torch.randn(3, 1, 3, 3, device=DEV)
    s, t, bw, bb, mean = (torch.randn(3, device=DEV) for _ in range(5))
    var = torch.rand(3, device=DEV) + 0.5
    rm, rv, nbt = torch.randn(3, device=DEV), torch.rand(3, device=DEV) + 0.5, torch.tensor(4, device=DEV)
    r = torch.randn(2, 3, 3, 2, device=DEV)
    torch.library.opcheck(dw_conv_bn_act, (x, w, s, t, None, bw, bb, rm, rv, nbt, 1, True, True, 1e-3, 0.1, True))
    torch.library.opcheck(dw_conv_bn_act, (x.to(memory_format=torch.channels_last), w, None, None, r, None, None,
                                           rm, rv, None, 2, False, True, 1e-5, None, True))
    g = torch.randn(2, 3, 5, 4, device=DEV)
    torch.library.opcheck(dw_conv_bn_act_backward, (g, x, w, s, t, bw, True, torch.float32, mean, var, s, t, 1, True,
                                                    True, 1e-3))
