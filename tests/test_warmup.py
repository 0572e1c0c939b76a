"""yolov10_kernels.warmup(): the capture of an accelerated model's launches on fake CUDA tensors and one compile for
sm_90a through the stand-in driver (in a subprocess: the launchers read TRITON_INTERPRET at import, and the suite
sets it), one compile job per Triton specialisation, the no-op without a GPU, and the argument checks."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import yolov10_kernels
from yolov10_kernels.capture import Launch
from yolov10_kernels.ops import utils

W = importlib.import_module("yolov10_kernels.warmup")  # the package's `warmup` is the function

ROOT = Path(__file__).resolve().parent.parent

_HARNESS = """
import json, os, time
os.environ.pop("TRITON_INTERPRET", None)
import torch
from yolov10.model import YOLOv10
from yolov10_kernels import accelerate
from yolov10_kernels.capture import capture, dropin_calls
from yolov10_kernels.warmup import compile_launches

model = accelerate(YOLOv10("yolov10n"), backend="auto").eval()
shape = [(2, 3, 64, 96)]
calls = {}
for train in (False, True):
    names = [type(m).__name__.split("_")[0] for m, _ in dropin_calls(model, shape, torch.float16, train, True)]
    calls["train" if train else "eval"] = {n: names.count(n) for n in set(names)}
launches = {"eval": capture(model, shape, torch.float16), "train": capture(model, shape, torch.float16, train=True),
            "amp": capture(model, shape, torch.float16, train=True, amp=True)}
one = launches["eval"][0]
one.configs = one.configs[:1]
t0 = time.time()
summary = compile_launches([one], 90, workers=1)
print(json.dumps({
    "calls": calls,
    "kernels": {k: sorted({(ln.module, ln.kernel) for ln in v}) for k, v in launches.items()},
    "weight_dtypes": {k: sorted({a[1] for ln in v for a in ln.args.values() if isinstance(a, tuple)})
                      for k, v in launches.items()},
    "model": [model.training, sorted({p.device.type for p in model.parameters()}),
              sorted({type(p).__name__ for p in model.parameters()}),
              sorted({m.backend for m in model.modules() if hasattr(m, "backend")})],
    "compiled": summary.compiled, "failed": summary.failed, "target": summary.target, "compile_s": time.time() - t0}))
"""


def test_capture_of_a_model_and_one_sm90_compile():
    """yolov10n at 64x96: every drop-in call is found (the cls heads run once per head in eval, twice in train),
    eval launches only forward kernels, train also backward ones, AMP keeps fp32 weights; the model is left as it
    was; one captured variant compiles for sm_90a in a worker process."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-c", _HARNESS], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["calls"]["eval"] == {"FusedCIB": 1, "FusedSCDown": 3, "FusedClsHead": 3, "FusedAttention": 1}
    assert out["calls"]["train"] == {"FusedCIB": 1, "FusedSCDown": 3, "FusedClsHead": 6, "FusedAttention": 1}
    kernels = {k: [name for module, name in v] for k, v in out["kernels"].items()}
    assert all(module.startswith("yolov10_kernels.ops.") for v in out["kernels"].values() for module, _ in v)
    assert any("psa" in k for k in kernels["eval"]) and not any("bwd" in k for k in kernels["eval"])
    assert any("psa_bwd" in k for k in kernels["train"])
    assert "float16" in out["weight_dtypes"]["train"]
    assert "float32" in out["weight_dtypes"]["amp"]
    assert out["model"] == [False, ["cpu"], ["Parameter"], ["auto"]]
    assert (out["compiled"], out["failed"], out["target"]) == (1, [], "sm_90"), out


def _launch(**args):
    return Launch("k", "m", None, args, {"FLAG": True}, [{"BLOCK": 64, "num_warps": 4, "num_stages": 2}], False)


def test_one_compile_job_per_specialisation():
    """Triton compiles once per argument specialisation: a tensor by dtype and 16-byte alignment, an int by == 1,
    divisibility by 16 (unless do_not_specialize) and 32/64 bits, a float by type; other values share a job."""
    t = lambda dtype, aligned=True: ("tensor", dtype, 100, aligned)  # noqa: E731
    same = [_launch(x=t("float16"), n=17), _launch(x=t("float16"), n=33), _launch(x=t("float16", True), n=3)]
    assert len(W.variants(same)) == 1
    differ = [_launch(x=t("float16"), n=17), _launch(x=t("float16"), n=32), _launch(x=t("float16"), n=1),
              _launch(x=t("float16"), n=2**33 + 1), _launch(x=t("bfloat16"), n=17),
              _launch(x=t("float16", False), n=17)]
    assert len(W.variants(differ)) == len(differ)
    class Param:  # a JITFunction's parameter that the kernel marks do_not_specialize
        name, do_not_specialize = "n", True
    unspecialised = [_launch(x=t("float16"), n=17), _launch(x=t("float16"), n=32)]
    for ln in unspecialised:
        ln.fn = type("Fn", (), {"params": [Param]})
    assert len(W.variants(unspecialised)) == 1
    two_configs = _launch(x=t("float16"), n=17)
    two_configs.configs = two_configs.configs + [{"BLOCK": 128, "num_warps": 8, "num_stages": 2}]
    assert len(W.variants([two_configs])) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
@pytest.mark.parametrize("interpret, why", [("1", "TRITON_INTERPRET=1"), ("0", "no CUDA device")])
def test_without_a_gpu_nothing_is_compiled_and_it_says_why(monkeypatch, interpret, why):
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    monkeypatch.setattr(utils, "_warned", set())
    monkeypatch.setattr(W, "capture", lambda *a, **k: pytest.fail("captured without a target"))
    with pytest.warns(RuntimeWarning, match=why):
        summary = yolov10_kernels.warmup(torch.nn.Module(), 64, 2, torch.bfloat16)
    assert summary.skipped.startswith(why) and (summary.variants, summary.compiled) == (0, 0)
    assert "nothing compiled" in str(summary)
    if interpret == "0":
        assert "target='H100' or 'sm_90a'" in summary.skipped


def test_a_model_without_dropins_is_a_clear_noop(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(utils, "_warned", set())
    with pytest.warns(RuntimeWarning, match="call accelerate"):
        summary = yolov10_kernels.warmup(torch.nn.Conv2d(3, 8, 3), 32, target="sm_90a")
    assert summary.skipped and summary.variants == 0


def test_bf16_on_a_gpu_without_bf16_says_so(monkeypatch):
    """bf16 on a T4 runs every drop-in's reference path (nothing to compile): the summary says why, not "call
    accelerate(model) first"."""
    from yolov10.model import YOLOv10
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(utils, "_warned", set())
    model = yolov10_kernels.accelerate(YOLOv10("n"), backend="auto")
    with pytest.warns(RuntimeWarning, match="T4 has no bf16 tensor cores"):
        summary = yolov10_kernels.warmup(model, 64, 1, torch.bfloat16, target="T4", workers=1)
    assert summary.variants == 0 and "use float16" in summary.skipped


@pytest.mark.parametrize("kwargs, match", [
    ({"dtype": torch.float64}, "dtype must be one of"),
    ({"dtype": "int8"}, "dtype must be one of"),
    ({"imgsz": 0}, "imgsz must be"),
    ({"imgsz": (640,)}, "imgsz must be"),
    ({"imgsz": "640"}, "imgsz must be"),
    ({"imgsz": (640, 480.0)}, "imgsz must be"),
    ({"batch": 0}, "batch must be"),
    ({"workers": 0}, "workers must be"),
    ({"target": "V100X"}, "unknown GPU 'V100X'"),
])
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        W.warmup(torch.nn.Module(), **kwargs)


def test_dtype_names_and_targets_are_accepted(monkeypatch):
    assert W._check_dtype("bfloat16") is torch.bfloat16 and W._check_imgsz((480, 640)) == (480, 640)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    from yolov10_kernels import gpus
    assert W.resolve_target("sm_90a") == (gpus.PROFILES["H100"], None)
    assert W.resolve_target(80) == (gpus.PROFILES["A100"], None)
    assert W.resolve_target("RTX3090")[0].arch == 86 and W.resolve_target("sm_87")[0].arch == 87  # not in the table
    with pytest.raises(ValueError, match="unknown GPU"):
        W.resolve_target("V100X")


def test_capture_restores_what_it_patches():
    """The capture patches autograd.Function.apply (a classmethod) to replay backwards; it must come back as the
    classmethod itself, not the method bound to Function (every later autograd.Function would run Function's)."""
    from yolov10_kernels.capture import BackwardReplay, patched
    before = vars(torch.autograd.Function)["apply"]
    with BackwardReplay().functions():
        assert vars(torch.autograd.Function)["apply"] is not before
    with patched(torch.autograd.Function, "apply", classmethod(lambda cls, *args: None)):
        pass
    assert vars(torch.autograd.Function)["apply"] is before
    x = torch.randn(3, requires_grad=True)
    (torch.nn.functional.silu(x) * torch.sigmoid(x)).sum().backward()  # autograd still works
    assert x.grad is not None
