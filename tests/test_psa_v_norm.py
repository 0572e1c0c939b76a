"""yolov10_kernels.ops.psa_v_norm: BN_qkv's v (the pe conv's input) and its backward op against torch in float64,
gradcheck, opcheck; the backward needs no shift."""
import os

import pytest
import torch

pytest.importorskip("triton")

from yolov10_kernels.ops import psa_v_norm as V  # noqa: E402
from helpers import assert_close  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1" else "cpu"


@pytest.mark.parametrize("cl", [False, True])
def test_v_norm_op(cl):
    """psa_v_norm: BN_qkv's v (the pe conv's input) and its gradients against torch, fp64; opcheck."""
    torch.manual_seed(13)
    heads, kd, hd = 2, 3, 5
    G = 2 * kd + hd
    qkv = torch.randn(2, heads * G, 3, 5, dtype=torch.float64, device=DEV)
    qkv = qkv.to(memory_format=torch.channels_last) if cl else qkv
    qa, qb = (torch.randn(heads * G, dtype=torch.float64, device=DEV) for _ in range(2))

    def ref(qkv, qa, qb):
        x = qkv * qa.view(1, -1, 1, 1) + qb.view(1, -1, 1, 1)
        return x.unflatten(1, (heads, G))[:, :, 2 * kd:].flatten(1, 2)
    ins = tuple(t.clone().requires_grad_() for t in (qkv, qa, qb))
    got = V.psa_v_norm(*ins, heads, kd, hd)
    assert got.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert_close(got, ref(*ins), rel=1e-12)
    assert torch.autograd.gradcheck(lambda *t: V.psa_v_norm(*t, heads, kd, hd), ins, eps=1e-6, atol=1e-8,
                                    fast_mode=True)
    torch.library.opcheck(V.psa_v_norm, (qkv.float(), qa.float(), qb.float(), heads, kd, hd))
    torch.library.opcheck(V.psa_v_norm_backward, (torch.randn(2, heads * hd, 3, 5, device=DEV), qkv.float(), qa.float(), heads,
                                                  kd, hd))



def test_backward_needs_no_shift():
    """The backward op takes no shift (its gradient is sum dout; the launcher used to hand the scale in as the
    shift, unread): gradients equal whatever the shift and its dtype, the shift's gradient in the shift's dtype."""
    torch.manual_seed(14)
    heads, kd, hd = 2, 3, 5
    G = 2 * kd + hd
    qkv = torch.randn(2, heads * G, 3, 5, device=DEV)
    qa = torch.rand(heads * G, device=DEV) + 0.5
    g = torch.randn(2, heads * hd, 3, 5, device=DEV)
    grads = []
    for qb in (torch.zeros(heads * G, device=DEV), torch.full((heads * G,), float("nan"), device=DEV).nan_to_num(7.0),
               torch.randn(heads * G, device=DEV, dtype=torch.float64)):
        ins = [t.clone().requires_grad_() for t in (qkv, qa, qb)]
        (V.psa_v_norm(*ins, heads, kd, hd) * g).sum().backward()
        assert ins[2].grad.dtype == qb.dtype
        grads.append([t.grad.double() for t in ins])
    want_b = g.unflatten(1, (heads, hd)).sum((0, 3, 4)).double()  # d shift of the v channels: sum of dout
    for gq, ga, gb in grads:
        assert_close(gq, grads[0][0], rel=0)
        assert_close(ga, grads[0][1], rel=0)
        assert_close(gb.view(heads, G)[:, 2 * kd:], want_b, rel=1e-5)
        assert (gb.view(heads, G)[:, :2 * kd] == 0).all()


def test_bad_inputs_and_empty_batches():
    qkv = torch.randn(1, 22, 3, 5, device=DEV)  # 2 heads x (2 * 3 + 5)
    v = torch.ones(22, device=DEV)
    with pytest.raises(ValueError, match="num_heads"):
        V.psa_v_norm(qkv, v, v, 2, 3, 4)
    with pytest.raises(ValueError, match="one value per qkv channel"):
        V.psa_v_norm(qkv, v[:21], v, 2, 3, 5)
    empty = torch.randn(0, 22, 3, 5, device=DEV, requires_grad=True)
    scale = v.clone().requires_grad_()
    out = V.psa_v_norm(empty, scale, v, 2, 3, 5)
    assert out.shape == (0, 10, 3, 5)
    out.sum().backward()
    assert empty.grad.shape == empty.shape and (scale.grad == 0).all()
