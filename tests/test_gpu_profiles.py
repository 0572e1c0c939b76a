"""Per-GPU choices (issue 19): the pointwise launchers size their tiles by the profile of the device at hand
(yolov10_kernels.gpus), and a drop-in whose kernels cannot run on the GPU at hand (bf16 on a T4, a Triton error
such as OutOfResources) falls back to its reference forward with one warning naming the module and the reason.
The launches are made on fake CUDA tensors (capture.fake_gpu) that report each profile; nothing is compiled here
(the static report compiles every chosen config for every profile: tests/test_gpu_budgets.py)."""
import types
import warnings

import pytest
import torch

from yolov10_kernels import gpus
from yolov10_kernels.capture import Recorder, fake_gpu, fake_input
from yolov10_kernels.modules.cls_head import FusedClsHead
from yolov10_kernels.ops import pwconv, utils

# (C_in, C_out) of yolov10n/s/m's pointwise convs: the cls head's (fused backward) up to the widest
CHANNELS = ((64, 64), (80, 80), (128, 128), (256, 512), (960, 256))
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@pytest.fixture
def gpu_launchers(monkeypatch):
    """The launchers choose GPU configs (TRITON_INTERPRET is read per call) for fake CUDA tensors."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(utils, "_warned", set())


@pytest.mark.parametrize("gpu", list(gpus.PROFILES))
def test_pointwise_tiles_fit_every_profile(gpu, gpu_launchers):
    profile = gpus.PROFILES[gpu]
    with fake_gpu(Recorder(), gpu) as mode:
        for dtype in DTYPES:
            x = fake_input(mode, (2, 8, 8, 8), dtype, True)
            e = x.element_size()
            for ci, co in CHANNELS:
                for kernel in ("fwd", "dgrad", "wgrad"):
                    m, n, k, warps, stages = pwconv._blocks(128, ci, co, x, kernel)
                    assert profile.fits(pwconv._smem(kernel, (m, n, k, stages), e)), (kernel, ci, co, dtype)
                    assert min(m, n, k) >= 16 and stages >= 2 and warps in (4, 8)
                fused = pwconv._blocks(128, ci, co, x, "fused") if max(ci, co) <= pwconv.FUSED_MAX else None
                if fused:
                    assert profile.fits(pwconv._smem("fused", (*fused[:3], fused[4]), e))


def test_preferred_tiles_where_shared_memory_allows(gpu_launchers):
    """The 227 KB GPUs keep the tiles sized with ptxas on sm_90a; smaller ones shrink stages first; a T4 still
    runs the cls head's fp16 backward in one kernel at 64 channels, and two where the fused one does not fit its
    shared memory or registers."""
    def blocks(gpu, dtype, ci, co, kernel):
        with fake_gpu(Recorder(), gpu) as mode:
            return pwconv._blocks(128, ci, co, fake_input(mode, (2, 8, 8, 8), dtype, True), kernel)
    assert blocks("H200", torch.float16, 256, 512, "fwd") == (128, 128, 64, 8, 3)
    assert blocks("H100", torch.float32, 256, 512, "wgrad") == (64, 128, 32, 8, 3)
    assert blocks("B200", torch.float32, 128, 128, "fused") == (32, 128, 128, 8, 2)
    assert blocks("RTX3090", torch.float16, 256, 512, "fwd") == (128, 128, 64, 8, 2)
    assert blocks("RTX3090", torch.float16, 128, 128, "fused") == (32, 128, 128, 8, 1)  # mma.sync: one stage
    assert blocks("RTX3090", torch.float16, 64, 128, "fused") == (32, 128, 64, 8, 2)
    assert blocks("RTX3090", torch.float32, 128, 128, "fused") is None
    assert blocks("A100", torch.float32, 128, 128, "fused") is None  # fp32 mma.sync fragments spill: two kernels
    assert blocks("A100", torch.float16, 128, 128, "fused") == (32, 128, 128, 8, 1)
    assert blocks("T4", torch.float16, 64, 64, "fused") is not None
    assert blocks("T4", torch.float16, 64, 128, "fused") is None  # FMA dots: the tiles spill the registers
    assert blocks("T4", torch.float16, 128, 128, "fused") is None


def _head():
    from yolov10.model import YOLOv10
    head = YOLOv10("n").model[-1]
    return FusedClsHead.from_module(head.cv3[0], "auto")


def _guarded(gpu, dtype, fused, module=None, calls=2):
    """module.guarded(x, fused) `calls` times on a fake CUDA x of `dtype` on `gpu`, the reference forward stubbed
    (fake tensors); returns (results, the package's warnings)."""
    m = module or _head()
    m.reference_forward = lambda x: "reference"
    with fake_gpu(Recorder(), gpu) as mode, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = fake_input(mode, (1, 64, 8, 8), dtype, True)
        out = [m.guarded(x, fused) for _ in range(calls)]
    return out, [str(w.message) for w in caught if "yolov10_kernels" in str(w.message)]


def test_bf16_without_bf16_tensor_cores_runs_the_reference_with_one_warning(gpu_launchers):
    out, warned = _guarded("T4", torch.bfloat16, lambda x: "fused")
    assert out == ["reference", "reference"]
    assert len(warned) == 1 and "FusedClsHead" in warned[0] and "T4" in warned[0] and "bfloat16" in warned[0]
    assert _guarded("T4", torch.float16, lambda x: "fused") == (["fused", "fused"], [])
    assert _guarded("RTX3090", torch.bfloat16, lambda x: "fused") == (["fused", "fused"], [])


def test_a_kernel_that_cannot_launch_falls_back_once_and_stays_on_the_reference(gpu_launchers):
    from triton.runtime.errors import OutOfResources
    tries = []

    def fused(x):
        tries.append(1)
        raise OutOfResources(114688, 101376, "shared memory")
    m = _head()
    out, warned = _guarded("RTX3090", torch.float16, fused, m, calls=3)
    assert out == ["reference"] * 3 and tries == [1]  # marked reference-only after the first failure
    assert len(warned) == 1 and "FusedClsHead" in warned[0] and "OutOfResources" in warned[0], warned
    assert "_unfusable" not in m.__reduce_ex__(2)[2]  # not pickled with the reference module


def _trial(m, fused, calls=2):
    """m.guarded(x, fused bound to m) `calls` times in training on a CPU x taken for a GPU's (dropin.on_gpu)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = torch.randn(1, 64, 8, 8)
        out = [m.guarded(x, types.MethodType(fused, m)) for _ in range(calls)]
    return out, [str(w.message) for w in caught if "yolov10_kernels" in str(w.message)]


class _BackwardOutOfResources(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        from triton.runtime.errors import OutOfResources
        raise OutOfResources(114688, 101376, "shared memory")


def test_a_backward_kernel_that_cannot_launch_falls_back_before_the_step(monkeypatch, gpu_launchers):
    """The fused backward is tried on a copy before the first training forward: a backward kernel that cannot
    launch sends the module to its reference path with one warning, instead of failing in loss.backward()."""
    from yolov10_kernels.modules import dropin
    monkeypatch.setattr(dropin, "on_gpu", lambda x: True)
    ran_on = []

    def fused(self, x):
        ran_on.append(self)
        return _BackwardOutOfResources.apply(x)
    m = _head().train()
    m.reference_forward = lambda x: "reference"
    out, warned = _trial(m, fused)
    assert out == ["reference", "reference"] and len(ran_on) == 1 and ran_on[0] is not m  # tried once, on a copy
    assert len(warned) == 1 and "FusedClsHead" in warned[0] and "OutOfResources" in warned[0], warned


def test_the_backward_check_runs_once_per_dtype_on_a_copy(monkeypatch, gpu_launchers):
    from yolov10_kernels.modules import dropin
    monkeypatch.setattr(dropin, "on_gpu", lambda x: True)
    ran_on = []

    def fused(self, x):
        ran_on.append(self)
        return x * self.weight_probe
    m = _head().train()
    m.weight_probe = torch.nn.Parameter(torch.ones(()))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out, warned = _trial(m, fused, calls=3)
    assert [o.shape for o in out] == [(1, 64, 8, 8)] * 3 and not warned
    assert len(ran_on) == 4 and ran_on[0] is not m and all(r is m for r in ran_on[1:])  # the copy, then m thrice
    assert m.weight_probe.grad is None and all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    m.eval()
    _trial(m, fused, calls=1)
    assert len(ran_on) == 5  # no check outside training


def test_other_errors_are_not_swallowed(gpu_launchers):
    def bug(x):
        raise ValueError("a bug, not the GPU")
    with pytest.raises(ValueError, match="a bug"):
        _guarded("RTX3090", torch.float16, bug)
    m = _head()  # a Triton error on a CPU tensor (the interpreter) is a failure to see, not to hide
    from triton.runtime.errors import OutOfResources

    def oor(x):
        raise OutOfResources(1, 0, "shared memory")
    with pytest.raises(OutOfResources):
        m.guarded(torch.zeros(1, 64, 8, 8), oor)


def test_autotuner_prunes_follow_the_profile(gpu_launchers):
    """The autotuners keep every config on a 227 KB GPU but the fp32 128 x 128 x 3-stage DW -> PW one (as sized
    for sm_90a), fewer on 99 KB and 64 KB GPUs, and never none."""
    from yolov10_kernels.ops import chain_eval_kernels as chain_eval, psa_attention_kernels as psa_attention

    def kept(gpu, dtype):
        with fake_gpu(Recorder(), gpu) as mode:
            x = fake_input(mode, (1, 64, 8, 8), dtype, True)
            heads = dict(KD0=32, KD1=4, HD0=64, HD1=8)
            return (len(chain_eval._prune_dw_pw(chain_eval._DW_PW_CONFIGS, {"x_ptr": x}, KS=3)),
                    len(chain_eval._prune_pw_pw(chain_eval._DW_PW_PW_CONFIGS, {"x_ptr": x}, KS=3, N1P=128)),
                    len(psa_attention._prune_fwd(psa_attention._FWD_CONFIGS, {"QKV": x}, **heads)),
                    len(psa_attention._prune_bwd(psa_attention._BWD_CONFIGS, {"QKV": x}, **heads)))
    assert kept("H200", torch.bfloat16) == (5, 4, 5, 4)
    assert kept("H200", torch.float32) == (4, 4, 5, 2)
    for gpu in ("RTX3090", "T4"):
        for dtype in DTYPES:
            sizes, most = kept(gpu, dtype), kept("H200", dtype)
            assert all(1 <= n <= m for n, m in zip(sizes, most)), (gpu, dtype, sizes)
    assert kept("T4", torch.float32)[0] < kept("H200", torch.float32)[0]


def test_bf16_dots_only_where_the_gpu_has_them(gpu_launchers):
    """An op called directly with bf16 on a T4 (the drop-ins do not: they run the reference there) takes exact
    fp32 dots instead of a bf16 dot Triton cannot lower there; fp16 keeps its tensor-core dot."""
    def dot(gpu, dtype):
        with fake_gpu(Recorder(), gpu) as mode:
            return pwconv._dot_cfg(fake_input(mode, (1, 16, 4, 4), dtype, True))
    assert dot("T4", torch.bfloat16) == (utils.tl.float32, True)
    assert dot("T4", torch.float16) == (utils.tl.float16, False)
    assert dot("RTX3090", torch.bfloat16) == (utils.tl.bfloat16, False)
