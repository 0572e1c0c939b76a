"""The measured dispatch (yolov10_kernels.dispatch): with an injected timer, on the CPU (the fused path runs
through TRITON_INTERPRET=1), decisions follow the timer and the margin, the per-call dispatch follows the
decisions, outputs and gradients do not depend on the path chosen, the model measured is untouched, the cache
round-trips and a kernel change invalidates it, the policy's argument and environment overrides, and the trainer
logs the table once."""
import copy
import json
import os

import pytest
import torch
import torch.nn as nn

import yolov10_kernels
from yolov10.model import YOLOv10
from yolov10.modules import CIB, Attention, Conv, SCDown
from yolov10_kernels import accelerate, backend, dispatch, warmup
from yolov10_kernels.modules import dropin
from yolov10_kernels.modules.psa import FusedPSA
from helpers import assert_close, randomize_bn

pytestmark = pytest.mark.skipif(not backend.triton_status("cpu")[0], reason="needs TRITON_INTERPRET=1 and triton")
SHAPE = (3, 3, 16, 16)  # the model input: the CIB sees 3x16x8x8, the SCDown 3x16x8x8 (-> 3x32x4x4)
# (module name, path, mode) -> ms: the CIB is faster fused in eval only; the SCDown is 4 % faster fused in eval
# (under the 5 % margin: reference) and 10 % in train (fused)
TIMES = {("1", "fused", "eval"): 1.0, ("1", "reference", "eval"): 2.0,
         ("1", "fused", "train"): 2.0, ("1", "reference", "train"): 1.0,
         ("2", "fused", "eval"): 0.96, ("2", "reference", "eval"): 1.0,
         ("2", "fused", "train"): 0.9, ("2", "reference", "train"): 1.0}
CHOICES = {("1", "eval"): "fused", ("1", "train"): "reference", ("2", "eval"): "reference", ("2", "train"): "fused"}


class FakeTimer:
    """Answers TIMES per case and records the cases; run=True also runs each case once (checks the runners)."""

    def __init__(self, times=TIMES, run=False):
        self.times, self.run, self.calls = times, run, []

    def __call__(self, fn, name, path, mode):
        self.calls.append((name, path, mode))
        if self.run:
            fn()
        return self.times[(name, path, mode)]


@pytest.fixture(autouse=True)
def fresh_dispatch(tmp_path, monkeypatch):
    """No decision or policy leaks between tests; the cache goes to a temporary directory."""
    monkeypatch.setenv("YOLOV10_KERNELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(dispatch.ENV, raising=False)
    dispatch.clear()
    yield
    dispatch.clear()


def small_model(seed=0):
    torch.manual_seed(seed)
    return accelerate(randomize_bn(nn.Sequential(Conv(3, 16, 3, 2), CIB(16, 16), SCDown(16, 32, 3, 2)), seed))


def choices(report):
    return {(r.module, r.mode): r.choice for r in report.rows}


def test_decisions_follow_the_timer_and_the_margin():
    timer = FakeTimer(run=True)
    report = dispatch.measure(small_model(), SHAPE, torch.float32, train=True, timer=timer)
    assert choices(report) == CHOICES
    assert sorted(timer.calls) == sorted(TIMES)
    assert [(r.shape, r.dtype, r.cached) for r in report.rows] == [((3, 16, 8, 8), "float32", False)] * 4
    assert dispatch.policy() == "measure" and dispatch.report() is report
    text = str(report)
    assert "fused where >= 5% faster" in text and "2 fused, 2 reference" in text
    assert "1                            train float32  3x16x8x8" in text and "2.000     1.000  reference" in text
    eval_only = dispatch.measure(small_model(), SHAPE, torch.float32, timer=FakeTimer(), cache=False)
    assert choices(eval_only) == {k: v for k, v in CHOICES.items() if k[1] == "eval"}


class PathSpy:
    """Which drop-ins ran their reference forward (the per-call dispatch's choice)."""

    def __init__(self, monkeypatch):
        self.reference = []
        original = dropin.DropIn.reference_forward
        monkeypatch.setattr(dropin.DropIn, "reference_forward",
                            lambda m, *a: self.reference.append(type(m).reference_class.__name__) or original(m, *a))
        # a stand-in for a CUDA device: backend 'auto' runs Triton (here through the interpreter)
        monkeypatch.setattr(dropin, "use_triton_on", lambda b, d: b != "reference")


def _step(model, x, train):
    """(output, parameter gradients) of a forward (+ backward in train) of a copy of `model` under the policy."""
    model = copy.deepcopy(model).train(train)
    if not train:
        with torch.no_grad():
            return model(x), []
    out = model(x)
    out.square().sum().backward()
    return out, [p.grad for p in model.parameters()]


@pytest.mark.parametrize("train", [False, True])
def test_per_call_dispatch_follows_the_decisions_and_outputs_do_not_depend_on_them(monkeypatch, train):
    spy, model = PathSpy(monkeypatch), small_model()
    x = torch.randn(SHAPE)
    dispatch.measure(model, SHAPE, torch.float32, train=True, timer=FakeTimer())
    results = {}
    for policy in ("measure", "fused", "reference"):
        dispatch.set_policy(policy)
        spy.reference.clear()
        results[policy] = _step(model, x, train)
        ran_reference = {"measure": [n for n, m in (("CIB", "1"), ("SCDown", "2"))
                                     if CHOICES[(m, "train" if train else "eval")] == "reference"],
                         "fused": [], "reference": ["CIB", "SCDown"]}[policy]
        assert spy.reference == ran_reference, policy
    for policy in ("measure", "fused"):
        out, grads = results[policy]
        assert_close(out, results["reference"][0], rel=1e-4, what=f"{policy} output")
        for i, (g, want) in enumerate(zip(grads, results["reference"][1])):
            assert_close(g, want, rel=1e-4, what=f"{policy} grad[{i}]")


def test_measuring_leaves_the_model_untouched():
    model = small_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dispatch.measure(model, SHAPE, torch.float32, train=True, timer=FakeTimer(run=True), cache=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running statistics
    assert all(p.grad is None for p in model.parameters())
    assert all(m.training for m in model.modules())
    assert {m.backend for m in model.modules() if isinstance(m, dropin.DropIn)} == {"auto"}


def test_the_cache_round_trips_and_a_kernel_change_invalidates_it(monkeypatch):
    model = small_model()
    first = dispatch.measure(model, SHAPE, torch.float32, train=True, timer=FakeTimer())
    saved = json.load(open(first.cache))
    assert os.path.dirname(first.cache) == os.environ["YOLOV10_KERNELS_CACHE"]
    assert saved["env"] == first.env and saved["env"]["kernels"] == dispatch.sources_hash()
    assert {v["module"] for v in saved["decisions"].values()} == {"1", "2"}
    dispatch.clear()

    def no_timing(*args, **kwargs):
        raise AssertionError("a cached decision was timed again")
    again = dispatch.measure(model, SHAPE, torch.float32, train=True, timer=no_timing)
    assert choices(again) == CHOICES and all(r.cached for r in again.rows) and again.cache == first.cache
    # the cache keeps times: a wider margin makes a new choice without timing (SCDown train is 10 % faster)
    wider = dispatch.measure(model, SHAPE, torch.float32, train=True, timer=no_timing, margin=0.2)
    assert choices(wider) == {**CHOICES, ("2", "train"): "reference"}
    monkeypatch.setattr(dispatch, "sources_hash", lambda: "a changed kernel")
    timer = FakeTimer()
    changed = dispatch.measure(model, SHAPE, torch.float32, train=True, timer=timer)
    assert len(timer.calls) == 8 and changed.cache != first.cache and choices(changed) == CHOICES


def test_the_policy_argument_wins_over_the_environment(monkeypatch):
    assert dispatch.policy() == "fused"
    monkeypatch.setenv(dispatch.ENV, "reference")
    assert dispatch.policy() == "reference"
    assert dispatch.set_policy("measure") == "measure"
    assert dispatch.set_policy(None) == "reference"
    model = small_model()
    accelerate(model, dispatch="fused")
    assert dispatch.policy() == "fused"
    monkeypatch.setenv(dispatch.ENV, "fastest")
    dispatch.clear()
    with pytest.raises(ValueError, match=r"dispatch must be one of \('fused', 'reference', 'measure'\), got 'fastest'"):
        dispatch.policy()
    with pytest.raises(ValueError, match="dispatch must be one of"):
        accelerate(model, dispatch="cudnn")
    with pytest.raises(ValueError, match=r"measure arguments \['shape'\] need dispatch='measure'"):
        accelerate(model, shape=SHAPE)
    with pytest.raises(ValueError, match="shape must be 4 positive ints"):
        dispatch.measure(model, (3, 16, 16), timer=FakeTimer())


def test_accelerate_measures_when_asked():
    model = accelerate(small_model(), dispatch="measure", shape=SHAPE, dtype=torch.float32, timer=FakeTimer())
    assert choices(dispatch.report()) == {k: v for k, v in CHOICES.items() if k[1] == "eval"}
    assert dispatch.policy() == "measure" and isinstance(model[1], dropin.DropIn)


def test_without_a_cuda_device_nothing_is_measured_and_it_says_why():
    model = small_model()
    report = dispatch.measure(model, SHAPE, torch.float32)
    assert report.rows == [] and report.skipped.startswith("no CUDA device") and dispatch.policy() == "fused"
    assert str(report).startswith("dispatch: nothing measured (no CUDA device")
    with pytest.warns(RuntimeWarning, match="nothing compiled"):
        summary = warmup(model, 16, 3, torch.float32, measure=True)
    assert summary.dispatch.skipped.startswith("no CUDA device") and "dispatch: nothing measured" in str(summary)
    plain = nn.Sequential(Conv(3, 16, 3, 2))
    assert "no drop-in" in dispatch.measure(plain, SHAPE, torch.float32, timer=FakeTimer()).skipped


def test_the_psa_block_is_measured_through_its_attention():
    model = accelerate(YOLOv10("yolov10n"))
    found = dispatch.dispatching(model)
    assert len(found) == sum(yolov10_kernels.swapped(model).values())  # one per CIB, SCDown, cls head, attention
    assert any(n.endswith(".attn") for n, _ in found)
    assert not any(isinstance(m, FusedPSA) for _, m in found)


def test_signature_is_structure_not_weights_or_dtype():
    a, b = small_model(0)[1], small_model(1)[1]
    assert a._dispatch_sig == b._dispatch_sig == dispatch.signature(copy.deepcopy(a).half())
    assert a._dispatch_sig.startswith("CIB-") and a._dispatch_sig != small_model()[2]._dispatch_sig
    wider = accelerate(nn.Sequential(CIB(32, 32)))[0]
    assert wider._dispatch_sig != a._dispatch_sig


def test_compiled_drop_in_follows_the_decision(monkeypatch):
    spy = PathSpy(monkeypatch)
    ref = randomize_bn(Attention(64, num_heads=2)).eval()
    fused = accelerate(nn.Sequential(copy.deepcopy(ref)))[0]
    x = torch.randn(2, 64, 3, 5)
    key = dispatch.decision_key(fused._dispatch_sig, tuple(x.shape), x.dtype, "eval")
    dispatch._decisions[key] = "reference"
    dispatch.set_policy("measure")
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert_close(compiled(x), ref(x), rel=1e-5)
    assert spy.reference == ["Attention"]  # traced once, through the reference forward


def test_the_trainer_logs_the_decision_table_once(tmp_path, monkeypatch, capsys):
    from yolov10.data.synth import make_synthetic_dataset
    from yolov10.trainer import Trainer
    data = str(make_synthetic_dataset(tmp_path / "synth", n_train=4, n_val=2, imgsz=64, seed=3))
    calls = []

    def timer(fn, name, path, mode):
        calls.append(mode)
        return 1.0
    monkeypatch.setattr(dispatch, "default_timer", lambda device: timer)
    Trainer(data=data, out=str(tmp_path / "run"), epochs=1, batch=2, imgsz=64, workers=0, kernels="auto",
            dispatch="measure", val=False, max_steps=1, deterministic=False).train()
    out = capsys.readouterr().out
    assert out.count("dispatch on cpu (Triton interpreter)") == 1 and set(calls) == {"eval", "train"}
    rows = dispatch.report().rows
    assert len(rows) == len(calls) // 2 and {r.choice for r in rows} == {"reference"}  # a tie keeps the reference
    assert all(f"{r.module:28} {r.mode:5}" in out for r in rows)
