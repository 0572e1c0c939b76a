"""Fused PSA attention (yolov10_kernels.ops.psa_attention, yolov10_kernels.modules.psa) against the reference
yolov10.modules Attention / PSA. On the CPU the Triton kernels run through TRITON_INTERPRET=1 (set by
conftest.py), in fp32 / fp64 only (bf16 tl.dot is broken in the interpreter); the low-precision checks need
a GPU."""
import copy
import types

import pytest
import torch

from yolov10.modules import PSA, Attention
from yolov10_kernels.backend import triton_status

ok, why = triton_status("cuda" if torch.cuda.is_available() else "cpu")
if not ok:
    pytest.skip(f"Triton kernels cannot run here: {why}", allow_module_level=True)

import yolov10_kernels  # noqa: E402
from yolov10_kernels import accelerate  # noqa: E402
from yolov10_kernels.modules.psa import FusedAttention, FusedPSA, swap  # noqa: E402
from yolov10_kernels.ops import psa_attention as P  # noqa: E402
from yolov10_kernels.ops import psa_attention_kernels as PK  # noqa: E402
from yolov10_kernels.testing import psa_baselines  # noqa: E402
from helpers import TF32_EPS, assert_close, randomize_bn

DEV = "cuda" if torch.cuda.is_available() else "cpu"
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def run(module, x, grad_seed=1):
    """Output and the gradients of <out, g> w.r.t. x and every parameter."""
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out)
    names, params = zip(*[(n, p) for n, p in module.named_parameters()])
    grads = torch.autograd.grad(out, (x, *params), g)
    names = [n.removeprefix("_orig_mod.") for n in names]  # a torch.compile'd module's parameter names
    return out.detach(), dict(zip(("input", *names), grads))


def assert_close_all(a, b, rtol, atol):
    """Output and gradients close; atol scales with the reference tensor's largest magnitude (gradients of
    the 1x1 convs reach tens while others are ~1e-2, and fp32 rounding scales with them)."""
    out_a, grads_a = a
    out_b, grads_b = b
    assert grads_a.keys() == grads_b.keys()
    for name, x, y in [("out", out_a, out_b)] + [(k, grads_a[k], grads_b[k]) for k in grads_a]:
        assert_close(x, y, rtol=rtol, atol=atol * max(1.0, y.abs().max().item()), what=name)


def assert_same_buffers(a, b, rtol=1e-6, atol=1e-7):
    bufs_b = dict(b.named_buffers())
    assert list(bufs_b) == [n for n, _ in a.named_buffers()]
    for name, ba in a.named_buffers():
        bb = bufs_b[name]
        tol = {} if ba.dtype == torch.long else dict(rtol=rtol, atol=atol)
        assert_close(ba, bb, **tol, what=name)


TOL = {torch.float32: (2e-4, 2e-5), torch.float64: (1e-9, 1e-10)}


# (heads, head_dim, H, W, dtype): key_dim = head_dim / 2; 7 x 9 = 63 tokens is odd and spans several tiles
@pytest.mark.parametrize("heads,hd,H,W,dtype", [
    (1, 72, 7, 9, torch.float32),   # m-scale head dims: hd 72, kd 36 (neither a power of two)
    (2, 32, 7, 9, torch.float32),
    (2, 16, 5, 3, torch.float64),
])
@pytest.mark.usefixtures("exact_fp32")  # the reference's fp32 convs exact (test_psa_fp32_tf32_default: TF32)
def test_attention_matches_reference(heads, hd, H, W, dtype):
    check_attention(heads, hd, H, W, dtype)


def check_attention(heads, hd, H, W, dtype):
    """A FusedAttention against the reference Attention, train and eval: output, every gradient, every buffer."""
    ref = randomize_bn(Attention(heads * hd, num_heads=heads)).to(DEV, dtype)
    fused = FusedAttention.from_module(copy.deepcopy(ref), backend="triton")
    assert fused.key_dim == hd // 2
    x = torch.randn(2, heads * hd, H, W, generator=torch.Generator().manual_seed(0)).to(DEV, dtype)
    rtol, atol = TOL[dtype]
    for train in (True, False):
        ref.train(train), fused.train(train)
        assert_close_all(run(fused, x), run(ref, x), rtol, atol)
        assert_same_buffers(fused, ref)  # running stats of qkv, pe and proj BNs, num_batches_tracked


@pytest.mark.parametrize("c1,H,W", [(144, 7, 9), (256, 5, 5)])  # c = 72: 1 head of 72; c = 128: 2 heads of 64
@pytest.mark.usefixtures("exact_fp32")
def test_psa_matches_reference(c1, H, W):
    ref = randomize_bn(PSA(c1, c1)).to(DEV)
    fused = FusedPSA.from_module(copy.deepcopy(ref), backend="triton")
    x = torch.randn(2, c1, H, W, generator=torch.Generator().manual_seed(0)).to(DEV)
    for train in (True, False):
        ref.train(train), fused.train(train)
        a, b = run(fused, x), run(ref, x)
        assert {k.split(".")[0] for k in a[1]} == {"input", "cv1", "cv2", "attn", "ffn"}
        assert_close_all(a, b, 2e-4, 2e-5)
        assert_same_buffers(fused, ref)


def test_folded_bn_eval():
    """After model.fuse() (BN folded into biased convs) the fused module runs without BN parameters."""
    ref = randomize_bn(Attention(64, num_heads=2)).to(DEV).eval()
    for m in (ref.qkv, ref.pe, ref.proj):
        m.fuse_bn()
    ref.requires_grad_(True)  # fuse_bn freezes the folded convs; their weight and bias gradients are compared
    fused = FusedAttention.from_module(copy.deepcopy(ref), backend="triton")
    x = torch.randn(2, 64, 4, 6).to(DEV)
    assert_close_all(run(fused, x), run(ref, x), 2e-4, 2e-5)


def _tiny_inputs(dtype, B=1, heads=1, kd=2, hd=4, H=2, W=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    CQ, C = heads * (2 * kd + hd), heads * hd
    r = lambda *s: torch.randn(*s, generator=g).to(DEV, dtype)  # noqa: E731
    return (r(B, CQ, H, W), r(CQ).abs() + 0.5, r(CQ) * 0.3, r(B, C, H, W), r(C).abs() + 0.5, r(C) * 0.3), \
        (heads, kd, hd)


def test_gradcheck_op():
    ins, dims = _tiny_inputs(torch.float64)
    ins = tuple(t.requires_grad_() for t in ins)
    assert torch.autograd.gradcheck(lambda *a: P.psa_attn(*a, *dims)[0], ins)


def test_gradcheck_functional_training():
    """Through the batch statistics of both BNs (mean / var terms of the BN backward) and the pe conv."""
    heads, kd, hd = 1, 2, 4
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, device=DEV)  # noqa: E731

    def bn(w, b, n):
        return types.SimpleNamespace(weight=w, bias=b, running_mean=torch.zeros(n, dtype=torch.float64, device=DEV),
                                     running_var=torch.ones(n, dtype=torch.float64, device=DEV),
                                     num_batches_tracked=None, momentum=0.03, eps=1e-3, track_running_stats=True)

    CQ, C = heads * (2 * kd + hd), heads * hd

    def f(raw, qw, qb, pw, pgw, pgb):
        return P.psa_attention(raw, bn(qw, qb, CQ), pw, bn(pgw, pgb, C), heads, kd, hd, True)

    ins = (r(2, CQ, 2, 3), r(CQ).abs() + 0.5, r(CQ) * 0.2, r(C, 1, 3, 3), r(C).abs() + 0.5, r(C) * 0.2)
    ins = tuple(t.requires_grad_() for t in ins)
    assert torch.autograd.gradcheck(f, ins, fast_mode=True)  # full mode: ~1 min in the interpreter
    want = psa_baselines.psa_attention_reference(ins[0], bn(*ins[1:3], CQ), ins[3], bn(*ins[4:], C), heads, kd, hd, True)
    assert_close(f(*ins), want, rtol=1e-7, atol=1e-7)  # torch.testing.assert_close's float64 defaults


def _op_reference(qkv, qa, qb, pe, pa, pb, heads, kd, hd):
    """psa_attn's `out` in plain torch."""
    B, _, H, W = qkv.shape
    x = (qkv * qa.view(1, -1, 1, 1) + qb.view(1, -1, 1, 1)).reshape(B, heads, 2 * kd + hd, H * W)
    q, k, v = x.split([kd, kd, hd], dim=2)
    attn = (q.transpose(-2, -1) @ k * kd ** -0.5).softmax(-1)
    return (v @ attn.transpose(-2, -1)).reshape(B, heads * hd, H, W) + pe * pa.view(1, -1, 1, 1) + pb.view(1, -1, 1, 1)


@pytest.mark.parametrize("kd,hd", [(40, 24), (20, 48)], ids=["kd32+16", "hd32+16"])
def test_op_split_head_dims_channels_last(kd, hd):
    """Head dims split into a power of two plus a padded remainder (key and value side), on channels_last
    inputs read in place: forward and every gradient against plain torch, fp64; the output and the raw-input
    gradients keep the inputs' layout."""
    ins, dims = _tiny_inputs(torch.float64, B=2, heads=2, kd=kd, hd=hd, H=5, W=3)
    assert P._head_dims(kd, hd)["KD1" if kd == 40 else "HD1"] == 16
    cl = [t.to(memory_format=torch.channels_last) if t.dim() == 4 else t for t in ins]
    cl = [t.detach().requires_grad_() for t in cl]
    out = P.psa_attn(*cl, *dims)[0]
    assert out.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype).to(out.device)
    grads = torch.autograd.grad(out, cl, g.to(memory_format=torch.channels_last))
    ref = [t.detach().contiguous().requires_grad_() for t in cl]
    want = _op_reference(*ref, *dims)
    assert_close(out, want, rtol=1e-9, atol=1e-10, what="out")
    for name, a, b, t in zip(("qkv", "qkv_scale", "qkv_shift", "pe", "pe_scale", "pe_shift"), grads,
                             torch.autograd.grad(want, ref, g), cl):
        assert_close(a, b, rtol=1e-9, atol=1e-10 * max(1.0, b.abs().max().item()), what=name)
        assert a.stride() == t.stride(), name


def test_autotune_key_buckets_tokens(monkeypatch):
    """Image sizes whose token counts share a power-of-two bucket, and any batch size, give one autotune key and
    one specialisation of the integer arguments (channels_last: no retune, no recompile). Kernels are not run."""
    calls = []

    class Rec:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((self.fn, dict(zip(self.fn.arg_names, args)), kwargs))

    def tuned(tuned, grid, interp_meta, args, kwargs):  # utils.launch_tuned: the autotuned kernels
        calls.append((tuned, dict(zip(tuned.fn.arg_names, args)), {**kwargs, **interp_meta}))

    monkeypatch.setattr(P, "launch_tuned", tuned)
    monkeypatch.setattr(P, "_psa_bwd_pre_kernel", Rec(P._psa_bwd_pre_kernel))

    def signatures(B, H, W):
        calls.clear()
        ins, dims = _tiny_inputs(torch.float32, B=B, heads=2, kd=16, hd=32, H=H, W=W)
        ins = [t.to(memory_format=torch.channels_last) if t.dim() == 4 else t for t in ins]
        out, lse = P.psa_attn(*ins, *dims)
        P.psa_attn_backward(torch.empty_like(out), *ins, out, lse, *dims)
        sigs = []
        for fn, named, kwargs in calls:
            jit = fn.fn if hasattr(fn, "keys") else fn  # an autotuner's kernel (on a GPU), or the kernel
            free = set(getattr(jit, "do_not_specialize", None) or jit.kwargs.get("do_not_specialize", ()))
            spec = {k: 1 if v == 1 else 16 if v % 16 == 0 else 0
                    for k, v in named.items() if type(v) is int and k not in free}
            sigs.append((jit.__name__, tuple({**named, **kwargs}.get(k) for k in PK._KEY), spec))  # pre: not tuned
        return sigs

    assert PK._KEY == ["N_BUCKET", "KD", "HD"]
    base = signatures(1, 20, 20)
    for shape in ((1, 19, 21), (1, 16, 24), (3, 20, 20), (64, 17, 30)):
        assert signatures(*shape) == base, shape
    assert signatures(1, 40, 40) != base  # N = 1600: another bucket


def test_opcheck():
    ins, dims = _tiny_inputs(torch.float32, B=2, heads=2, kd=8, hd=16, H=3, W=3)
    fwd_in = tuple(t.requires_grad_() for t in ins)
    torch.library.opcheck(torch.ops.yolov10_kernels.psa_attn.default, (*fwd_in, *dims))
    with torch.no_grad():
        out, lse = P.psa_attn(*ins, *dims)
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.yolov10_kernels.psa_attn_backward.default,
                          (dout, *[t.detach() for t in ins], out, lse, *dims))


def test_compile_fullgraph():
    ref = randomize_bn(Attention(64, num_heads=2)).to(DEV)
    fused = FusedAttention.from_module(copy.deepcopy(ref), backend="triton")
    x = torch.randn(2, 64, 3, 5).to(DEV)
    # Inductor also passes on the CPU but compiles C++ for ~30 s; aot_eager still traces the whole graph
    # (dynamo, fake tensors, AOT autograd through the registered backward)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager" if DEV == "cpu" else "inductor")
    assert_close_all(run(compiled, x), run(ref, x), 2e-4, 2e-5)
    assert_same_buffers(fused, ref)



def test_torch_export_eval():
    """torch.export captures the registered attention op; the exported program matches the reference."""
    ref = randomize_bn(Attention(64, num_heads=2)).to(DEV).eval()
    fused = FusedAttention.from_module(copy.deepcopy(ref), backend="triton").eval()
    x = torch.randn(2, 64, 3, 5).to(DEV)
    ep = torch.export.export(fused, (x,))
    assert any("psa_attn" in str(n.target) for n in ep.graph.nodes)
    with torch.no_grad():
        assert_close(ep.module()(x), ref(x), rtol=2e-4, atol=2e-5)

def test_sdpa_rewrite_matches_reference():
    ref = randomize_bn(Attention(144, num_heads=2))
    x = torch.randn(2, 144, 5, 7)
    for train in (True, False):
        a, b = copy.deepcopy(ref).train(train), copy.deepcopy(ref).train(train)
        args = lambda m, raw: (raw, m.qkv.bn, m.pe.conv.weight, m.pe.bn, 2, 36, 72, train)  # noqa: E731
        out_sdpa = a.proj(psa_baselines.psa_attention_sdpa(*args(a, a.qkv.conv(x))))
        out_ref = b(x)
        assert_close(out_sdpa, out_ref, rtol=1e-4, atol=1e-5)
        assert_same_buffers(a, b)


def test_accelerate_swaps_psa_and_keeps_state_dict():
    """The whole model (fp32 outputs; the block-level tests above compare gradients)."""
    import yolov10
    torch.manual_seed(0)
    ref = randomize_bn(yolov10.YOLOv10("yolov10n")).to(DEV)
    model = copy.deepcopy(ref)
    keys = list(model.state_dict())
    accelerate(model, ops=("psa",), backend="triton")
    assert yolov10_kernels.swapped(model) == {"psa": 1}
    assert sum(isinstance(m, FusedPSA) for m in model.modules()) == 1
    assert not any(type(m) in (PSA, Attention) for m in model.modules())
    psa = next(m for m in model.modules() if isinstance(m, FusedPSA))
    assert (psa.i, psa.f) == (10, -1)  # the layer bookkeeping the model's forward relies on survives the swap
    assert list(model.state_dict()) == keys
    model.load_state_dict(ref.state_dict(), strict=True)
    assert swap(model, "triton") == 1  # already swapped: nothing new, the backend is set again
    x = torch.randn(2, 3, 64, 64, device=DEV)  # PSA runs at 2 x 2
    for train in (True, False):
        model.train(train), ref.train(train)
        out, out_ref = model(x), ref(x)
        if isinstance(out, dict):
            out, out_ref = out["one2one"], out_ref["one2one"]
        elif isinstance(out, tuple):
            out, out_ref = out[0], out_ref[0]
        for a, b in zip(out if isinstance(out, list) else [out], out_ref if isinstance(out_ref, list) else [out_ref]):
            assert_close(a, b, rtol=1e-4, atol=1e-4)
        assert_same_buffers(model, ref, rtol=1e-5, atol=1e-6)


def test_auto_backend_on_cpu_uses_reference(monkeypatch):
    ref = randomize_bn(PSA(128, 128))
    fused = FusedPSA.from_module(copy.deepcopy(ref), backend="auto")
    called = []
    monkeypatch.setattr("yolov10_kernels.modules.psa.psa_attention", lambda *a, **k: called.append(1))
    x = torch.randn(2, 128, 3, 3)
    assert_close(fused(x), ref(x))
    assert not called


# ------------------------------------------------------------------ GPU only
@cuda_only
@pytest.mark.parametrize("c1,H,W", [(144, 7, 9), (256, 20, 20)])
def test_psa_fp32_tf32_default(c1, H, W, monkeypatch):
    """fp32 with torch's default switches (cuDNN TF32 on, so the fused attention's dots are TF32 too) against
    the float64 reference: within 32 TF32_EPS (TF32's unit roundoff; the block has about five dots in a row) of
    the largest value, output and every gradient."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    ref64 = randomize_bn(PSA(c1, c1)).cuda().double()
    fused = FusedPSA.from_module(copy.deepcopy(ref64).float(), backend="triton")
    x = torch.randn(2, c1, H, W, device="cuda")
    for train in (True, False):
        ref64.train(train), fused.train(train)
        r, f = run(ref64, x.double()), run(fused, x)
        for name, a, b in [("out", r[0], f[0])] + [(k, r[1][k], f[1][k]) for k in r[1]]:
            assert_close(b.double(), a, rel=32 * TF32_EPS, what=f"train={train} {name}")


@cuda_only
@pytest.mark.parametrize("lowp", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("c1,H,W", [(512, 20, 20), (576, 20, 20), (256, 7, 9)])  # s (4 x 64) and m (4 x 72)
def test_low_precision_gpu(lowp, c1, H, W):
    """|fused_lowp - ref32| <= 2 |torch_lowp - ref32| + atol, for the output and every gradient."""
    ref32 = randomize_bn(PSA(c1, c1)).cuda()
    torch_lowp = copy.deepcopy(ref32).to(lowp)
    fused = FusedPSA.from_module(copy.deepcopy(ref32), backend="triton").to(lowp)
    x = torch.randn(4, c1, H, W, device="cuda")
    for train in (True, False):
        for m in (ref32, torch_lowp, fused):
            m.train(train)
        r, t, f = run(ref32, x), run(torch_lowp, x.to(lowp)), run(fused, x.to(lowp))
        pairs = [("out", r[0], t[0], f[0])] + [(k, r[1][k], t[1][k], f[1][k]) for k in r[1]]
        for name, a, b, c in pairs:
            err_torch = (b.float() - a).abs().max().item()
            atol = 1e-3 * max(a.abs().max().item(), 1e-6)
            assert_close(c.float(), a, atol=2 * err_torch + atol,
                         what=f"{lowp} train={train} {name} (PyTorch's error {err_torch:.3g})")


@cuda_only
def test_no_quadratic_memory_gpu():
    """Forward + backward memory grows linearly in N: from N = 400 to N = 1600 (1280 px) the peak grows
    about 4x (a B x heads x N^2 term would make it about 16x), and stays below one bf16 score tensor."""
    B, heads, hd = 16, 4, 64
    m = FusedAttention(heads * hd, num_heads=heads, backend="triton").cuda().to(torch.bfloat16)
    peaks = {}
    for side in (20, 40):
        x = torch.randn(B, heads * hd, side, side, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        m(x).sum().backward()  # warm up (autotune)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        m(x).sum().backward()
        torch.cuda.synchronize()
        peaks[side * side] = torch.cuda.max_memory_allocated() - base
    assert peaks[1600] / peaks[400] < 6, peaks
    assert peaks[1600] < B * heads * 1600 ** 2 * 2, peaks
