"""Inference (eval, BN folded) kernels of the depthwise-separable chains (yolov10_kernels.ops.chain_eval)
against the reference modules in eval mode: CIB (3x3 and RepVGGDW 7x7), SCDown (stride 2), the v10Detect cls
branch. CPU runs go through TRITON_INTERPRET=1 (set by conftest) with tiny shapes; the GPU tests (fp16/bf16)
run only where CUDA is available."""
import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from yolov10.head import v10Detect
from yolov10.modules import CIB, SCDown
from yolov10_kernels.backend import triton_status
from yolov10_kernels.modules.cib import FusedCIB
from yolov10_kernels.modules.cls_head import FusedClsHead
from yolov10_kernels.modules.scdown import FusedSCDown
from yolov10_kernels.ops import chain_eval as D
from yolov10_kernels.ops import dw_pw_dw_infer, dw_pw_infer, dw_pw_pw_infer, folded, pw_dw_infer
from yolov10_kernels.ops.utils import is_channels_last
from helpers import assert_close, randomize_bn

CUDA = torch.cuda.is_available()
needs_triton_cpu = pytest.mark.skipif(not triton_status("cpu")[0], reason="needs TRITON_INTERPRET=1 and triton")
needs_cuda = pytest.mark.skipif(not (CUDA and triton_status("cuda")[0]), reason="needs a CUDA device and triton")



INFER_OPS = (dw_pw_infer, dw_pw_pw_infer, pw_dw_infer, dw_pw_dw_infer)  # the op modules of the eval chains


def patch_launches(monkeypatch, launch):
    """Every eval-chain op launches through `launch` (utils.launch_tuned's signature) from now on."""
    for mod in INFER_OPS:
        monkeypatch.setattr(mod, "launch_tuned", launch)

def make_cib(c=20, lk=False, shortcut=True, c1=None, e=1.0):
    return randomize_bn(CIB(c1 or c, c, shortcut, e=e, lk=lk)).eval()


def make_scdown(c1=20, c2=36, k=3, s=2):
    return randomize_bn(SCDown(c1, c2, k, s)).eval()


def make_cls(ch=24, nc=20):
    return randomize_bn(v10Detect(nc=nc, ch=(ch,)).cv3[0]).eval()


FUSED = {CIB: FusedCIB, SCDown: FusedSCDown, nn.Sequential: FusedClsHead}


def fused(ref, backend="triton"):
    return FUSED[type(ref)].from_module(ref, backend)


def check(ref, x, rel=1e-4):
    f = fused(ref)
    with torch.no_grad():
        want = ref(x)
        got = f(x)
    assert_close(got, want, rel=rel)
    # output memory format follows the input, as for nn.Conv2d
    assert got.is_contiguous(memory_format=torch.channels_last if is_channels_last(x) else torch.contiguous_format)
    return got


# ---- CIB ----
@needs_triton_cpu
@pytest.mark.parametrize("lk", [False, True], ids=["dw3", "repvgg7"])
@pytest.mark.parametrize("b,h,w,cl", [(1, 9, 13, False), (3, 5, 7, True)], ids=["b1-9x13", "b3-5x7-cl"])
def test_cib_matches_reference(lk, b, h, w, cl):
    x = torch.randn(b, 20, h, w)
    check(make_cib(20, lk), x.to(memory_format=torch.channels_last) if cl else x)


@needs_triton_cpu
def test_cib_multiblock_no_shortcut_fp64(monkeypatch):
    """Several channel blocks and K chunks (blocks capped at 16 for 20/40 channels), c1 != c2 (no residual),
    a 1-pixel-wide map, several tiles per image and the persistent loop; fp64 to 1e-10."""
    monkeypatch.setattr(folded, "INTERPRET_MAX_BLOCK", 16)
    ref = make_cib(20, lk=True, c1=12, e=1.0).double()
    assert not ref.add
    check(ref, torch.randn(2, 12, 11, 1, dtype=torch.float64), rel=1e-10)
    ref = make_cib(20, lk=False).double()
    check(ref, torch.randn(1, 20, 9, 17, dtype=torch.float64), rel=1e-10)


# ---- SCDown ----
@needs_triton_cpu
@pytest.mark.parametrize("b,h,w,cl", [(1, 9, 11, False), (3, 8, 8, True), (1, 1, 2, False)],
                         ids=["b1-9x11", "b3-8x8-cl", "b1-1x2"])
def test_scdown_matches_reference(b, h, w, cl):
    x = torch.randn(b, 20, h, w)
    check(make_scdown(), x.to(memory_format=torch.channels_last) if cl else x)


@needs_triton_cpu
def test_scdown_multiblock_fp64(monkeypatch):
    monkeypatch.setattr(folded, "INTERPRET_MAX_BLOCK", 16)
    check(make_scdown(20, 36).double(), torch.randn(2, 20, 7, 5, dtype=torch.float64), rel=1e-10)
    check(make_scdown(20, 18, k=3, s=1).double(), torch.randn(1, 20, 5, 6, dtype=torch.float64), rel=1e-10)


# ---- cls head ----
@needs_triton_cpu
@pytest.mark.parametrize("b,h,w,cl", [(1, 7, 5, False), (3, 4, 6, True)], ids=["b1-7x5", "b3-4x6-cl"])
def test_cls_head_matches_reference(b, h, w, cl):
    x = torch.randn(b, 24, h, w)
    check(make_cls(24, nc=20), x.to(memory_format=torch.channels_last) if cl else x)


@needs_triton_cpu
def test_cls_head_multiblock_fp64(monkeypatch):
    monkeypatch.setattr(folded, "INTERPRET_MAX_BLOCK", 16)
    ref = make_cls(18, nc=37).double()  # c3 = max(18, min(37, 100)) = 37 hidden channels, 37 classes
    check(ref, torch.randn(2, 18, 5, 3, dtype=torch.float64), rel=1e-10)


# ---- folding, caching and dispatch of the drop-ins ----
@needs_triton_cpu
def test_fold_cache_tracks_parameters_and_leaves_reference_untouched():
    ref = make_cib(8, lk=True)
    f = fused(ref)
    before = copy.deepcopy(ref.state_dict())
    x = torch.randn(1, 8, 5, 4)
    with torch.no_grad():
        a = f(x)
        assert f.folded() is f.folded()  # cached
        for k, v in ref.state_dict().items():
            assert_close(v, before[k], what=f"{k} (must be unmodified)")
        ref.cv1[2].conv1.bn.running_var.mul_(2.0)  # in place, as a train step or load_state_dict would
        ref.cv1[1].conv.weight.add_(0.1)
        assert_close(f(x), ref(x), rel=1e-4)
        assert not torch.allclose(f(x), a)
    p = f.folded()
    f.train().eval()  # train()/eval() drop the cache
    assert f.folded() is not p


@needs_triton_cpu
def test_fused_model_state_is_supported():
    """After model.fuse()-style folding (Conv.fuse_bn, RepVGGDW.fuse) the drop-in folds nothing twice."""
    ref = make_cib(8, lk=True)
    x = torch.randn(1, 8, 6, 5)
    with torch.no_grad():
        want = ref(x)
        f = fused(ref)
        for m in ref.modules():
            if hasattr(m, "fuse"):
                m.fuse()
        for m in ref.modules():
            if hasattr(m, "fuse_bn"):
                m.fuse_bn()
        assert_close(f(x), want, rel=1e-4)


@needs_triton_cpu
def test_eval_with_grad_does_not_launch_the_inference_kernels(monkeypatch):
    """The inference kernels have no backward: an eval forward that needs gradients runs the training op (BNs on
    their running statistics; its values and gradients: tests/test_accelerate.py)."""
    ref = make_scdown(8, 8)
    f = fused(ref)
    patch_launches(monkeypatch, lambda *a, **k: pytest.fail("kernel launched"))
    x = torch.randn(1, 8, 5, 5, requires_grad=True)
    f(x).sum().backward()
    assert x.grad is not None and ref.cv1.conv.weight.grad is not None


@needs_triton_cpu
def test_op_validation_errors():
    p = fused(make_scdown(8, 8)).folded()
    l1, l2 = p.layers
    x = torch.randn(1, 8, 5, 5)
    with pytest.raises(ValueError, match="pw_w has shape"):
        D.pw_dw_infer(x[:, :4], l1.w, l1.b, l2.w, l2.b, 2, True, False, False)
    with pytest.raises(ValueError, match=r"\(k\*k, C\)"):
        D.pw_dw_infer(x, l1.w, l1.b, l2.w[:8], l2.b, 2, True, False, False)
    with pytest.raises(TypeError, match="fp32"):
        D.pw_dw_infer(x, l1.w.half(), l1.b, l2.w, l2.b, 2, True, False, False)


# ---- autotune keys and specialisation: no retune / recompile for shapes that share a bucket ----
def _spec_class(v):
    """What Triton specialises an int argument on: == 1, divisible by 16, or neither."""
    return 1 if v == 1 else 16 if v % 16 == 0 else 0


def _unspecialised(fn):
    return set(getattr(fn, "do_not_specialize", None) or fn.kwargs.get("do_not_specialize", ()))  # jit / interpreter


def _tuning_signatures(monkeypatch, block, x):
    """Per launch of block(x): (kernel, autotune key, specialisation of the int arguments), without running it."""
    calls = []
    patch_launches(monkeypatch, lambda tuned, grid, interp_meta, args, kwargs: calls.append((tuned, args, kwargs)))
    with torch.no_grad():
        block(x)
    sigs = []
    for tuned, args, kwargs in calls:
        named = {**dict(zip(tuned.arg_names, args)), **kwargs}
        free = _unspecialised(tuned.fn)
        spec = {k: _spec_class(v) for k, v in named.items() if type(v) is int and k not in free}
        sigs.append((tuned.fn.__name__, tuple(named[k] for k in tuned.keys), spec))
    return sigs


@needs_triton_cpu
def test_autotune_keys_bucket_batch_and_image_size(monkeypatch):
    """Batch sizes, and image sizes and rectangular shapes whose per-image pixel counts share a bucket, give one
    autotune key and one specialisation (channels_last, channel counts multiples of 16 as in every yolov10
    layer): no retune and no recompile. Kernels are not run."""
    cl = torch.channels_last
    blocks = {"cib": (D.cib_infer, fused(make_cib(32, lk=True)).folded(), 32),
              "cib3": (D.cib_infer, fused(make_cib(32, lk=False)).folded(), 32),
              "scdown": (D.scdown_infer, fused(make_scdown(32, 48)).folded(), 32),
              "cls": (D.cls_head_infer, fused(make_cls(32, nc=16)).folded(), 32)}
    # 640 / 608 / rectangular maps at P5 (SCDown's stride-2 outputs share a bucket too) at batch 1, 7 and 64, and
    # maps above the cap (PIX_BUCKET_CAP)
    same_bucket = [[(1, 20, 20), (1, 19, 21), (7, 24, 16), (64, 22, 22)], [(2, 576, 512), (1, 528, 520)]]
    for name, (fn, p, c) in blocks.items():
        for group in same_bucket:
            sigs = [_tuning_signatures(monkeypatch, lambda x: fn(x, p), torch.empty(b, c, h, w).to(memory_format=cl))
                    for b, h, w in group]
            assert all(s == sigs[0] for s in sigs), (name, group, sigs)
        small, large = (_tuning_signatures(monkeypatch, lambda x: fn(x, p), torch.empty(1, c, h, h).to(
            memory_format=cl)) for h in (20, 80))
        assert [s[1] for s in small] != [s[1] for s in large], name  # a P5 map and a P3 one tune apart


# ---- torch.library ----
def _op_cases():
    torch.manual_seed(0)
    cib = fused(make_cib(8, lk=True)).folded().layers
    sc = fused(make_scdown(8, 12)).folded().layers
    cls = fused(make_cls(8, nc=12)).folded().layers
    x = torch.randn(1, 8, 5, 3)
    t = torch.randn(1, 16, 5, 3).to(memory_format=torch.channels_last)
    c = cls
    return {
        "dw_pw_infer": (x, cib[0].w, cib[0].b, cib[1].w, cib[1].b, True, True, True),
        "dw_pw_dw_infer": (t, cib[2].w, cib[2].b, cib[3].w, cib[3].b, cib[4].w, cib[4].b, x, True, True, True, False),
        "pw_dw_infer": (x, sc[0].w, sc[0].b, sc[1].w, sc[1].b, 2, True, False, False),
        "dw_pw_pw_infer": (torch.randn(1, 12, 3, 4), c[2].w, c[2].b, c[3].w, c[3].b, c[4].w, c[4].b,
                           True, True, False, False),
    }


@needs_triton_cpu
@pytest.mark.parametrize("name", ["dw_pw_infer", "dw_pw_dw_infer", "pw_dw_infer", "dw_pw_pw_infer"])
def test_opcheck(name):
    args = _op_cases()[name]
    torch.library.opcheck(getattr(torch.ops.yolov10_kernels, name).default, args)


@needs_triton_cpu
def test_torch_compile_fullgraph_eval_block():
    ref = make_scdown(8, 12)
    f = fused(ref)
    x = torch.randn(1, 8, 7, 5)
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    with torch.no_grad():
        assert_close(compiled(x), ref(x), rel=1e-4)



@needs_triton_cpu
def test_torch_export_eval_blocks():
    """torch.export of an inference block (traced without autograd, as inference export is: with gradients
    wanted the drop-in runs the reference) captures the registered ops and matches the reference."""
    for ref, x in ((make_cib(6, lk=True), torch.randn(1, 6, 5, 7)), (make_scdown(8, 12), torch.randn(1, 8, 7, 5))):
        with torch.no_grad():
            ep = torch.export.export(fused(ref), (x,))
            assert any("yolov10_kernels" in str(n.target) for n in ep.graph.nodes)
            assert_close(ep.module()(x), ref(x), rel=1e-4)

# ---- the compiled (non-interpreted) path: lower every kernel for sm_90 without a GPU ----
_LOWER_SCRIPT = textwrap.dedent("""
    import triton
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    import yolov10_kernels.ops.chain_eval_kernels as D

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)

    def lower(fn, ptrs, consts, num_warps):
        sig = {n: ("constexpr" if n in consts else ptrs.get(n, "i32")) for n in fn.arg_names}
        src = ASTSource(fn, sig, constexprs=consts)
        options = backend.parse_options({"num_warps": num_warps, "num_stages": 2})
        context = ir.context()
        ir.load_dialects(context)
        backend.load_dialects(context)
        mod = src.make_ir(target, options, backend.get_codegen_implementation(options), backend.get_module_map(),
                          context)
        stages = {}
        backend.add_stages(stages, options, src.language)
        md = {}
        for name in ("ttir", "ttgir", "llir"):
            mod = stages[name](mod, md)

    for act, w, prec in (("*bf16", "*fp32", "tf32"), ("*fp32", "*fp32", "ieee")):
        lower(D._dw_pw_kernel, dict(x_ptr=act, dww_ptr=w, dwb_ptr=w, pww_ptr=w, pwb_ptr=w, out_ptr=act),
              dict(KS=3, ACT_DW=True, ACT_PW=True, DOT_PREC=prec, BLOCK_P=64, BLOCK_N=64, BLOCK_K=32), 4)
        lower(D._dw_pw_pw_kernel, dict(x_ptr=act, dww_ptr=w, dwb_ptr=w, pww_ptr=w, pwb_ptr=w, pw2w_ptr=w,
                                       pw2b_ptr=w, out_ptr=act),
              dict(KS=3, ACT_DW=True, ACT_PW=True, ACT_PW2=False, DOT_PREC=prec, N1P=128, BLOCK_P=32, BLOCK_K=32,
                   BLOCK_N2=64), 4)
        lower(D._pw_dw_kernel, dict(x_ptr=act, pww_ptr=w, pwb_ptr=w, dww_ptr=w, dwb_ptr=w, out_ptr=act),
              dict(KS=3, STRIDE=2, ACT_PW=True, ACT_DW=False, DOT_PREC=prec, BLOCK_Q=64, BLOCK_N=64, BLOCK_K=32), 4)
        lower(D._dw_pw_dw_kernel, dict(x_ptr=act, dw1w_ptr=w, dw1b_ptr=w, pww_ptr=w, pwb_ptr=w, dw2w_ptr=w,
                                       dw2b_ptr=w, res_ptr=act, out_ptr=act, scr_ptr=act),
              dict(KS1=7 if prec == "tf32" else 3, KS2=3, ACT1=True, ACT_PW=True, ACT2=True, HAS_RES=True,
                   DOT_PREC=prec, BLOCK_E=128, MAX_EW=16, BLOCK_N=64, BLOCK_K=32), 8)
    print("lowered")
""")


@pytest.mark.skipif(not triton_status("cpu")[0] and not CUDA, reason="needs triton")
def test_kernels_lower_for_sm90():
    """The interpreter runs the kernels' Python; this runs Triton's real front end and GPU lowering (to LLVM IR,
    for sm_90, no device needed), which rejects things the interpreter accepts."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _LOWER_SCRIPT], env=env, capture_output=True, text=True, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0 and "lowered" in r.stdout, r.stderr[-4000:]


# ---- GPU: fp16/bf16 against fp32, relative to PyTorch's own low-precision error ----
def _lowp_check(ref32, x32, dtype, channels_last, atol):
    ref32 = ref32.cuda().eval()
    x32 = x32.cuda()
    if channels_last:
        x32 = x32.to(memory_format=torch.channels_last)
    x = x32.to(dtype)
    with torch.no_grad():
        want32 = ref32(x32)
        ref_lp = copy.deepcopy(ref32).to(dtype)
        torch_lp = ref_lp(x)
        got = fused(ref_lp, "triton")(x)  # the drop-in on the low-precision module, like model.half()
        got_auto = fused(copy.deepcopy(ref_lp), "auto")(x)
    assert got.dtype == dtype
    torch_err = (torch_lp.float() - want32).abs().max().item()
    assert_close(got.float(), want32, atol=2 * torch_err + atol, what=f"{dtype} (PyTorch's error {torch_err:.3g})")
    assert_close(got_auto, got, what="auto")  # 'auto' takes the Triton path on CUDA tensors


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_gpu_lowp_blocks(dtype, channels_last):
    torch.manual_seed(0)
    atol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    # yolov10s-like shapes: CIB (lk) at P5, CIB 3x3, SCDown P3->P4, cls head at P3, with odd sizes
    _lowp_check(make_cib(256, lk=True), torch.randn(2, 256, 20, 20), dtype, channels_last, atol)
    _lowp_check(make_cib(96, lk=False), torch.randn(3, 96, 21, 17), dtype, channels_last, atol)
    _lowp_check(make_scdown(128, 256), torch.randn(2, 128, 80, 80), dtype, channels_last, atol)
    _lowp_check(make_scdown(72, 136), torch.randn(1, 72, 41, 39), dtype, channels_last, atol)
    _lowp_check(make_cls(128, nc=80), torch.randn(2, 128, 80, 80), dtype, channels_last, atol)
    _lowp_check(make_cls(40, nc=7), torch.randn(1, 40, 13, 11), dtype, channels_last, atol)


@needs_cuda
def test_gpu_fp32_blocks():
    torch.manual_seed(0)
    cases = [(make_cib(64, lk=True), torch.randn(2, 64, 20, 20)), (make_scdown(64, 128), torch.randn(2, 64, 33, 31)),
             (make_cls(64, nc=80), torch.randn(2, 64, 40, 40))]
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), torch.no_grad():  # an exact fp32 reference
        for ref, x in cases:
            ref, x = ref.cuda(), x.cuda()
            assert_close(fused(ref)(x), ref(x), rel=1e-4)
