"""The pointwise conv's backward (yolov10_kernels.ops.pwconv): the fused kernel (g and x read once, for channel
counts up to FUSED_MAX) and the two-kernel path (forced by lowering FUSED_MAX) against autograd through torch ops
in float64, for every gradient (x, weight, in_scale, in_shift, bias), with and without the statistics term, bias,
BN-affine prologue and SiLU, NCHW and channels_last, odd shapes. On the CPU the kernels run through
TRITON_INTERPRET=1 (tests/conftest.py); every buffer the launchers allocate is NaN-poisoned."""
import itertools
import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from yolov10_kernels.ops import pwconv, utils  # noqa: E402
from yolov10_kernels.ops.pwconv import pw_conv_bn, pw_conv_bn_backward  # noqa: E402
from helpers import assert_close  # noqa: E402

CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
DEV = "cuda" if CUDA else "cpu"
# fp32 tolerance against the float64 reference, and between the two paths: exact fp32 dots under the interpreter,
# TF32 on the GPU (cuDNN's default for the convs the op replaces; IEEE fp32 dots take the two-kernel path there)
REL, SAME = (5e-3, 1e-3) if CUDA else (1e-4, 1e-5)


@pytest.fixture(autouse=True)
def tf32_as_cudnn_default(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)


# ------------------------------------------------------------------------------------------------ helpers
def make_case(n, ci, h, w, co, affine, act, bias, stats, has_gy=True, channels_last=False, dtype=torch.float32,
              seed=0):
    """Random inputs of one backward call in `dtype` (the op's arguments) and the float64 reference gradients of the
    same (rounded) values: autograd through the BN-affine / SiLU prologue and F.conv2d, loss <y, gy> (when has_gy)
    + <mean, gm> + <var, gv> (when stats), mean and biased var per output channel."""
    g = torch.Generator().manual_seed(seed)
    sd = utils.acc_dtype(dtype)

    def rand(*shape, dt=dtype, offset=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) + offset).to(dt).double()
    x, wt, gy = rand(n, ci, h, w), rand(co, ci, 1, 1), rand(n, co, h, w)
    params = {"x": x, "w": wt}
    if affine:
        params.update(s=rand(ci, offset=1.0), t=rand(ci))
    if bias:
        params["b"] = rand(co)
    gm, gv = (rand(co, dt=sd), rand(co, dt=sd)) if stats else (None, None)
    leaf = {k: v.clone().requires_grad_() for k, v in params.items()}
    u = leaf["x"] * leaf["s"][:, None, None] + leaf["t"][:, None, None] if affine else leaf["x"]
    y = F.conv2d(F.silu(u) if act else u, leaf["w"], leaf.get("b"))
    terms = [(y * gy).sum()] if has_gy else []
    if stats:
        terms += [(y.mean((0, 2, 3)) * gm).sum(), (y.var((0, 2, 3), unbiased=False) * gv).sum()]
    ref = dict(zip(leaf, torch.autograd.grad(sum(terms), list(leaf.values()))))

    def dev(v, dt=dtype):
        if v is None:
            return None
        v = v.to(DEV, dt)
        return v.contiguous(memory_format=torch.channels_last) if channels_last and v.dim() == 4 else v
    y_raw = y.detach().to(dtype).double()  # the saved raw output, in the op's dtype
    args = (dev(gy) if has_gy else None, dev(gm, sd), dev(gv, sd), dev(x), dev(wt), dev(params.get("s")),
            dev(params.get("t")), dev(y_raw) if stats else None, dev(y_raw.mean((0, 2, 3)), sd) if stats else None,
            act, bias, stats)
    return args, ref


def track_paths(monkeypatch):
    """The list of backward launchers ("fused" / "split") that run from now on."""
    taken = []
    for path in ("fused", "split"):
        fn = getattr(pwconv, f"_{path}_backward")
        monkeypatch.setattr(pwconv, f"_{path}_backward", lambda *a, _fn=fn, _path=path: taken.append(_path) or _fn(*a))
    return taken


def run_backward(monkeypatch, args, path):
    """pw_conv_bn_backward(*args) on `path` ("fused", or "split": FUSED_MAX lowered below every channel count),
    checking that it ran there."""
    monkeypatch.setattr(pwconv, "FUSED_MAX", 128 if path == "fused" else 0)
    taken = track_paths(monkeypatch)
    out = pw_conv_bn_backward(*args)
    assert taken == [path], taken
    return out


def check(out, ref, args, rel, what=""):
    """The op's (grad x, grad W, grad in_scale, grad in_shift, grad bias) against the reference gradients: values,
    dtypes (grad x and W in x's dtype, the vectors in the accumulation dtype), grad x in x's memory format, and
    empty vectors where the layer has no such parameter."""
    x = args[3]
    sd = utils.acc_dtype(x.dtype)
    fmt = torch.channels_last if utils.is_channels_last(x) else torch.contiguous_format
    assert out[0].is_contiguous(memory_format=fmt), f"{what}grad x does not follow x's memory format"
    for got, key, dt in zip(out, "xwstb", (x.dtype, x.dtype, sd, sd, sd)):
        if key in ref:
            assert_close(got, ref[key].to(DEV, dt), rel=rel, what=f"{what}grad {key}")
        else:
            assert got.numel() == 0, f"{what}grad {key} should be empty"


# ------------------------------------------------------------------------------------------------ both paths
FLAGS = list(itertools.product([False, True], repeat=4))  # affine, act, bias, stats


@pytest.mark.parametrize("affine,act,bias,stats", FLAGS,
                         ids=[f"aff{int(a)}-act{int(c)}-bias{int(b)}-stats{int(s)}" for a, c, b, s in FLAGS])
def test_fused_and_split_match_reference_every_flag(monkeypatch, affine, act, bias, stats):
    args, ref = make_case(3, 5, 5, 7, 6, affine, act, bias, stats)
    for path in ("fused", "split"):
        check(run_backward(monkeypatch, args, path), ref, args, REL, f"{path}: ")


SHAPES = [  # n, c_in, h, w, c_out, channels_last
    (1, 5, 5, 7, 6, True),
    (3, 12, 5, 7, 5, False),
    (3, 12, 5, 7, 5, True),
    (1, 16, 3, 3, 16, False),
    (3, 6, 11, 13, 12, True),  # 429 rows: two row tiles under the interpreter, the last one partial
    (2, 24, 7, 5, 20, False),  # 24 -> 20: blocks of 32 with 8 and 12 masked channels
]


@pytest.mark.parametrize("n,ci,h,w,co,cl", SHAPES, ids=[f"{n}x{ci}x{h}x{w}-to{co}-{'cl' if cl else 'nchw'}"
                                                        for n, ci, h, w, co, cl in SHAPES])
@pytest.mark.parametrize("affine,act,bias,stats", [(True, True, False, True), (False, False, True, False),
                                                   (True, False, True, True)], ids=["bnsilu-stats", "bias", "all"])
def test_fused_and_split_match_reference_shapes(monkeypatch, n, ci, h, w, co, cl, affine, act, bias, stats):
    args, ref = make_case(n, ci, h, w, co, affine, act, bias, stats, channels_last=cl, seed=n * ci + co)
    outs = {path: run_backward(monkeypatch, args, path) for path in ("fused", "split")}
    for path, out in outs.items():
        check(out, ref, args, REL, f"{path}: ")
    for f, s, name in zip(outs["fused"], outs["split"], ("x", "weight", "in_scale", "in_shift", "bias")):
        assert_close(f, s, rel=SAME, what=f"fused vs split grad {name}")


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
def test_statistics_gradient_alone(monkeypatch, cl):
    """Only the batch statistics are used (no dL/dy: the raw output feeds nothing but its BN): g is the statistics
    term alone."""
    args, ref = make_case(3, 7, 5, 6, 9, True, True, False, True, has_gy=False, channels_last=cl, seed=3)
    assert args[0] is None
    for path in ("fused", "split"):
        check(run_backward(monkeypatch, args, path), ref, args, REL, f"{path}: ")


def test_path_follows_the_channel_limit(monkeypatch):
    """FUSED_MAX is compared with the channel counts rounded up to a power of two: 3 -> 128 fuses, 3 -> 130 does not
    (nor does 130 -> 3)."""
    taken = track_paths(monkeypatch)
    for ci, co in ((3, 128), (3, 130), (130, 3)):
        args, ref = make_case(1, ci, 2, 3, co, True, True, True, True, seed=co)
        check(pw_conv_bn_backward(*args), ref, args, REL, f"{ci} -> {co}: ")
    assert taken == ["fused", "split", "split"], taken


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_fused_low_precision(monkeypatch, dtype):
    """fp16/bf16 storage: grad x and W in the input dtype, the vector gradients in fp32, within the low-precision
    rounding of the outputs and of the saved raw output."""
    args, ref = make_case(2, 12, 5, 7, 10, True, True, True, True, channels_last=True, dtype=dtype, seed=5)
    check(run_backward(monkeypatch, args, "fused"), ref, args, 2e-2 if dtype == torch.bfloat16 else 3e-3)


# ------------------------------------------------------------------------------------------------ gradcheck, opcheck
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
def test_gradcheck_fused_fp64(monkeypatch, cl):
    """float64 finite differences through pw_conv_bn's forward and its fused backward: the statistics outputs, the
    BN-affine + SiLU prologue, bias."""
    torch.manual_seed(5)
    d = dict(dtype=torch.float64, device=DEV)
    x = torch.randn(2, 3, 2, 3, **d)
    x = (x.contiguous(memory_format=torch.channels_last) if cl else x).requires_grad_()
    w = torch.randn(4, 3, 1, 1, **d, requires_grad=True)
    si, ti = (torch.randn(3, **d, requires_grad=True) for _ in range(2))
    b = torch.randn(4, **d, requires_grad=True)
    taken = track_paths(monkeypatch)

    def f(x, w, si, ti, b):
        y, mean, var = pw_conv_bn(x, w, si, ti, None, True, True)
        y2, _, _ = pw_conv_bn(x, w, si, ti, b, False, False)
        return y, mean, var, y2
    assert torch.autograd.gradcheck(f, (x, w, si, ti, b), eps=1e-6, atol=1e-7, fast_mode=True)
    expected = "split" if CUDA else "fused"  # on the GPU an fp64 (FMA) dot takes the two kernels
    assert taken and set(taken) == {expected}, taken


def test_opcheck_backward_fused(monkeypatch):
    torch.manual_seed(8)
    taken = track_paths(monkeypatch)
    x = torch.randn(2, 5, 3, 3, device=DEV)
    w = torch.randn(6, 5, 1, 1, device=DEV)
    s, t = (torch.randn(5, device=DEV) for _ in range(2))
    y, g = (torch.randn(2, 6, 3, 3, device=DEV) for _ in range(2))
    gm, gv, mean = (torch.randn(6, device=DEV) for _ in range(3))
    torch.library.opcheck(pw_conv_bn_backward, (g, gm, gv, x, w, s, t, y, mean, True, True, True))
    torch.library.opcheck(pw_conv_bn_backward, (g.to(memory_format=torch.channels_last), None, None,
                                                x.to(memory_format=torch.channels_last), w, None, None, None, None,
                                                False, True, False))
    assert taken and set(taken) == {"fused"}, taken


# ---- moved from tests/test_chain_train.py: gradcheck and opcheck of the op ----
def test_gradcheck_pw_op_fp64():
    torch.manual_seed(5)
    d = dict(dtype=torch.float64, device=DEV)
    x = torch.randn(1, 3, 2, 3, **d, requires_grad=True)
    w = torch.randn(2, 3, 1, 1, **d, requires_grad=True)
    si, ti = (torch.randn(3, **d, requires_grad=True) for _ in range(2))
    b = torch.randn(2, **d, requires_grad=True)

    def f(x, w, si, ti, b):
        y, mean, var = pw_conv_bn(x, w, si, ti, None, True, True)
        y2, _, _ = pw_conv_bn(x, w, None, None, b, False, False)
        return y, mean, var, y2
    assert torch.autograd.gradcheck(f, (x, w, si, ti, b), eps=1e-6, atol=1e-7, fast_mode=True)


def test_opcheck_pw_conv_bn():
    torch.manual_seed(8)
    x = torch.randn(2, 5, 3, 3, device=DEV, requires_grad=True)
    w = torch.randn(6, 5, 1, 1, device=DEV, requires_grad=True)
    s, t = (torch.randn(5, device=DEV, requires_grad=True) for _ in range(2))
    b = torch.randn(6, device=DEV, requires_grad=True)
    torch.library.opcheck(pw_conv_bn, (x, w, s, t, None, True, True))
    torch.library.opcheck(pw_conv_bn, (x.detach().to(memory_format=torch.channels_last).requires_grad_(), w, None,
                                       None, b, False, False))
    y = torch.randn(2, 6, 3, 3, device=DEV)
    g = torch.randn(2, 6, 3, 3, device=DEV)
    gm, gv, mean = (torch.randn(6, device=DEV) for _ in range(3))
    torch.library.opcheck(pw_conv_bn_backward, (g, gm, gv, x.detach(), w.detach(), s.detach(), t.detach(), y, mean,
                                                True, False, True))
