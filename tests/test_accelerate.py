"""yolov10_kernels.accelerate() on whole YOLOv10 models with the depthwise-chain drop-ins (CIB, SCDown, cls head):
same train-mode maps, loss, parameter gradients and BN running statistics as the reference model, same eval
output, checkpoints load either way; op selection, backend selection and the off switch. On the CPU the Triton
kernels run through TRITON_INTERPRET=1 (tests/conftest.py), hence the tiny inputs."""
import copy
import importlib

import pytest
import torch

import yolov10_kernels
from yolov10.head import v10Detect
from yolov10.loss import V10DetectLoss
from yolov10.model import YOLOv10
from yolov10.modules import CIB, Attention, Conv, SCDown
from yolov10_kernels import accelerate, backend
from yolov10_kernels.modules import dropin
from yolov10_kernels.ops import dw_pw_dw_infer, dw_pw_infer, dw_pw_pw_infer, pw_dw_infer
from yolov10_kernels.ops import utils
from yolov10_kernels.modules.cib import FusedCIB
from yolov10_kernels.modules.cls_head import FusedClsHead
from yolov10_kernels.modules.psa import FusedAttention
from yolov10_kernels.modules.scdown import FusedSCDown
from helpers import assert_close, randomize_bn

DW_OPS = ("cib", "scdown", "cls_head")
needs_triton_cpu = pytest.mark.skipif(not backend.triton_status("cpu")[0], reason="needs TRITON_INTERPRET=1 and triton")


def build(cfg="yolov10n", seed=0):
    torch.manual_seed(seed)
    return randomize_bn(YOLOv10(cfg), seed)


@pytest.fixture(scope="module")
def nano_model():
    return build("yolov10n")


@pytest.fixture
def nano(nano_model):
    """A fresh copy of one yolov10n (building a model runs a 256x256 dry run)."""
    return copy.deepcopy(nano_model)


def count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


def assert_maps_close(got, want, rel=1e-4, what="map"):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, rel=rel, what=f"{what}[{i}]")


def targets(batch_size, nc):
    g = torch.Generator().manual_seed(1)
    n = 3 * batch_size
    xy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.1
    return {"batch_idx": torch.arange(n) % batch_size, "cls": torch.randint(0, nc, (n, 1), generator=g).float(),
            "bboxes": torch.cat([xy, wh], 1)}


def eval_outputs(model, x):
    """One-to-one maps, their decoded (B, 4 + nc, A) predictions and the final top-k scores (the top-k indices
    can swap between near-equal scores, the sorted values cannot)."""
    head = model.head
    with torch.no_grad():
        maps = head._branch(model.features(x), head.one2one_cv2, head.one2one_cv3)
        return maps, head.decode(maps), model(x)


def assert_eval_close(acc, ref, x):
    maps_a, dec_a, out_a = eval_outputs(acc, x)
    maps_r, dec_r, out_r = eval_outputs(ref, x)
    assert_maps_close(maps_a, maps_r, what="eval one2one map")
    assert_close(dec_a, dec_r, rel=1e-4, what="decoded predictions")
    assert out_a.shape == out_r.shape
    assert_close(out_a[..., 4], out_r[..., 4], rel=1e-4, what="top-k scores")


# ---------------------------------------------------------------------------------------------- whole model
@needs_triton_cpu
@pytest.mark.parametrize("cfg,n_cib", [("yolov10n", 1), ("yolov10s", 2)])
def test_accelerated_model_matches_reference(cfg, n_cib):
    """float64, 32x64 input: at these tiny maps (P5 is 1x2, so 4 values per BN channel) the train-mode BN
    backward is a cancellation that amplifies rounding about a million times (fp32 gives ~1e-2 relative gradient
    differences between two equally valid evaluation orders; with 2 values per channel, fp64 still gives 1e-4).
    fp32 accuracy is tested block by block (tests/test_chain_eval.py, tests/test_chain_train.py)."""
    ref = build(cfg).double()
    acc = accelerate(copy.deepcopy(ref), ops=DW_OPS, backend="triton")
    assert yolov10_kernels.swapped(acc) == {"cib": n_cib, "scdown": 3, "cls_head": 6}
    assert (count(acc, FusedCIB), count(acc, FusedSCDown), count(acc, FusedClsHead)) == (n_cib, 3, 6)
    assert count(acc, CIB) == n_cib and count(acc, SCDown) == 3  # drop-ins are still the reference types
    assert list(acc.state_dict().keys()) == list(ref.state_dict().keys())
    for i in (5, 7, 20):  # the layer bookkeeping the model's forward relies on survives the swap
        assert isinstance(acc.model[i], FusedSCDown) and (acc.model[i].i, acc.model[i].f) == (i, -1)
    x = torch.randn(2, 3, 32, 64, dtype=torch.float64)

    # eval (builds the folded-weight caches)
    ref.eval(), acc.eval()
    assert_eval_close(acc, ref, x)

    # train: maps, loss, gradients, running statistics
    ref.train(), acc.train()
    out_r, out_a = ref(x), acc(x)
    for k in ("one2many", "one2one"):
        assert_maps_close(out_a[k], out_r[k], what=f"train {k} map")
    batch = targets(x.shape[0], ref.nc)
    loss_r, items_r = V10DetectLoss(ref)(out_r, batch)
    loss_a, items_a = V10DetectLoss(acc)(out_a, batch)
    assert_close(loss_a, loss_r, rel=1e-4, what="loss")
    assert_close(items_a, items_r, rel=1e-4, what="loss items")
    loss_r.backward()
    loss_a.backward()
    params_a = dict(acc.named_parameters())
    for name, p in ref.named_parameters():
        g_r, g_a = p.grad, params_a[name].grad
        assert (g_r is None) == (g_a is None), name
        if g_r is not None:
            assert_close(g_a, g_r, rel=1e-4, atol=1e-12, what=f"grad of {name}")
    bufs_a = dict(acc.named_buffers())
    for name, b in ref.named_buffers():
        tol = dict(rtol=1e-5, atol=1e-7) if b.dtype.is_floating_point else {}
        assert_close(bufs_a[name], b, **tol, what=f"running stat {name}")

    # an optimizer step and new running statistics: the eval caches must notice
    for m in (ref, acc):
        torch.optim.SGD(m.parameters(), lr=0.05).step()
    ref.eval(), acc.eval()
    assert_eval_close(acc, ref, x)


# ---------------------------------------------------------------------------------------------- checkpoints
def test_state_dict_keys_and_loading_either_way(nano):
    ref = nano
    acc = accelerate(build("yolov10n", seed=1), ops=DW_OPS, backend="reference")
    assert list(acc.state_dict().keys()) == list(ref.state_dict().keys())
    acc.load_state_dict(ref.state_dict(), strict=True)
    for (k, a), b in zip(acc.state_dict().items(), ref.state_dict().values()):
        assert_close(a, b, what=k)
    plain = YOLOv10("yolov10n")
    plain.load_state_dict(acc.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    ref.eval(), acc.eval(), plain.eval()
    assert_close(acc(x), ref(x), what="accelerated")
    assert_close(plain(x), ref(x), what="plain")


# ---------------------------------------------------------------------------------------------- selection
def test_ops_subset_and_reaccelerate(nano):
    m = accelerate(nano, ops="scdown", backend="reference")
    assert yolov10_kernels.swapped(m) == {"scdown": 3}
    assert (count(m, FusedSCDown), count(m, FusedCIB), count(m, FusedClsHead)) == (3, 0, 0)
    m = accelerate(m, ops=["cls_head", "cib"], backend="auto")
    assert yolov10_kernels.swapped(m) == {"cls_head": 6, "cib": 1, "scdown": 3}  # the earlier swap stays
    assert (count(m, FusedSCDown), count(m, FusedCIB), count(m, FusedClsHead)) == (3, 1, 6)
    assert all(f.backend == "auto" for f in m.modules() if isinstance(f, FusedCIB))
    assert all(f.backend == "reference" for f in m.modules() if isinstance(f, FusedSCDown))
    head = m.head
    assert all(isinstance(s, FusedClsHead) for s in list(head.cv3) + list(head.one2one_cv3))
    assert not any(isinstance(s, FusedClsHead) for s in list(head.cv2) + list(head.one2one_cv2))


def test_unknown_op_and_backend(nano):
    with pytest.raises(ValueError, match="unknown op"):
        accelerate(nano, ops=["cib", "dwconv"])
    with pytest.raises(ValueError, match="backend must be one of"):
        accelerate(nano, ops=DW_OPS, backend="cuda")
    assert count(nano, dropin.DropIn) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error(monkeypatch, nano):
    acc = accelerate(copy.deepcopy(nano), ops=DW_OPS, backend="reference")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        accelerate(nano, ops=DW_OPS, backend="triton")
    # a model accelerated earlier with backend="triton" fails the same way on its first call
    for f in acc.modules():
        if isinstance(f, dropin.DropIn):
            f.set_backend("triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        acc.eval()(torch.randn(1, 3, 32, 32))
    monkeypatch.setattr(backend, "triton_status", lambda device_type=None: (False, "triton is broken here"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="triton is broken here"):
        accelerate(nano, ops=DW_OPS, backend="triton")
    assert count(nano, dropin.DropIn) == 0


@pytest.fixture
def no_launch(monkeypatch):
    """Any Triton launch of these ops (inference kernels or the training chain) fails the test."""
    def boom(*a, **k):
        raise AssertionError("a Triton kernel was launched")
    for mod in (dw_pw_infer, dw_pw_pw_infer, pw_dw_infer, dw_pw_dw_infer):
        monkeypatch.setattr(mod, "launch_tuned", boom)
    monkeypatch.setattr(dropin, "chain_train", boom)


def _same_as_reference(acc, ref, x):
    ref.train(), acc.train()
    out_r, out_a = ref(x), acc(x)
    for k in ("one2many", "one2one"):
        for a, b in zip(out_a[k], out_r[k]):
            assert_close(a, b, what=f"train {k} map")
    ref.eval(), acc.eval()
    with torch.no_grad():
        assert_close(acc(x), ref(x), what="eval output")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_auto_backend_on_cpu_keeps_reference_path(no_launch, nano):
    ref = nano
    acc = accelerate(copy.deepcopy(ref), ops=DW_OPS, backend="auto")
    assert yolov10_kernels.swapped(acc) == {"cib": 1, "scdown": 3, "cls_head": 6}
    _same_as_reference(acc, ref, torch.randn(2, 3, 32, 32))


def test_kernels_off_switch(monkeypatch, no_launch, nano):
    ref = nano
    monkeypatch.setenv("YOLOV10_KERNELS", "off")
    monkeypatch.setattr(utils, "_warned", set())
    with pytest.warns(RuntimeWarning, match="YOLOV10_KERNELS=off"):
        m = accelerate(copy.deepcopy(ref), backend="triton")
    assert yolov10_kernels.swapped(m) == {}
    assert count(m, dropin.DropIn) == 0 and [type(a) for a in m.modules()] == [type(b) for b in ref.modules()]
    # a model accelerated before the switch was flipped runs the reference path
    monkeypatch.delenv("YOLOV10_KERNELS")
    acc = accelerate(copy.deepcopy(ref), ops=DW_OPS, backend="auto")
    monkeypatch.setenv("YOLOV10_KERNELS", "off")
    for f in acc.modules():
        if isinstance(f, dropin.DropIn):
            f.set_backend("triton")
    _same_as_reference(acc, ref, torch.randn(2, 3, 32, 32))
    assert backend.triton_status() == (False, "YOLOV10_KERNELS=off")


def test_available_reports_reasons(monkeypatch):
    status = yolov10_kernels.available()
    assert "triton" in status
    for name, (ok, why) in status.items():
        assert isinstance(ok, bool) and isinstance(why, str) and why, name
    if not torch.cuda.is_available():
        ok, why = status["triton"]
        assert ok == backend.triton_interpreted() and ("TRITON_INTERPRET" in why)
    monkeypatch.setenv("YOLOV10_KERNELS", "off")
    assert yolov10_kernels.available()["triton"] == (False, "YOLOV10_KERNELS=off")


def test_unsupported_layouts_are_left_alone(nano):
    """A module whose layout the kernels do not implement keeps the reference forward (and a warning)."""
    model = nano
    odd = model.model[5]
    odd.cv2.conv.dilation = (2, 2)  # not a YOLOv10 layout
    monkey = utils._warned.copy()
    try:
        with pytest.warns(RuntimeWarning, match="do not implement"):
            accelerate(model, ops="scdown", backend="reference")
    finally:
        utils._warned.clear()
        utils._warned.update(monkey)
    assert type(model.model[5]) is SCDown and count(model, FusedSCDown) == 2


def test_cls_head_swap_skips_fused_heads(nano):
    model = nano
    model.fuse()  # drops cv2/cv3 (the one-to-many branches) and folds every BN
    m = accelerate(model, ops="cls_head", backend="reference")
    assert yolov10_kernels.swapped(m) == {"cls_head": 3}
    assert isinstance(m.head, v10Detect) and not hasattr(m.head, "cv3")


# ---------------------------------------------------------------------------------------------- eval mode, gradients
def _cls_head(c, c3, nc):
    return torch.nn.Sequential(torch.nn.Sequential(Conv(c, c, 3, g=c), Conv(c, c3, 1)),
                               torch.nn.Sequential(Conv(c3, c3, 3, g=c3), Conv(c3, c3, 1)), torch.nn.Conv2d(c3, nc, 1))


EVAL_BLOCKS = {  # name: (reference block, drop-in class, input shape): odd sizes, channels not multiples of 16
    "cib_lk": (lambda: CIB(6, 6, shortcut=True, e=1.0, lk=True), FusedCIB, (2, 6, 5, 7)),
    "scdown": (lambda: SCDown(6, 10, 3, 2), FusedSCDown, (2, 6, 7, 6)),
    "cls_head": (lambda: _cls_head(6, 12, 5), FusedClsHead, (1, 6, 5, 5)),
    "psa": (lambda: Attention(16, num_heads=2), FusedAttention, (3, 16, 3, 5)),
}


@pytest.fixture
def no_reference(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the reference forward ran")
    monkeypatch.setattr(dropin.DropIn, "reference_forward", boom)


@needs_triton_cpu
@pytest.mark.parametrize("name", list(EVAL_BLOCKS))
def test_eval_mode_with_gradients_runs_the_kernels(name, no_reference):
    """model.eval(); model(x) outside torch.no_grad(): the kernels run (the chains through the training op with
    BNs on running statistics), with the reference's output, input and parameter gradients, statistics untouched."""
    make, cls, shape = EVAL_BLOCKS[name]
    torch.manual_seed(3)
    ref = randomize_bn(make(), 3).eval()
    mine = cls.from_module(copy.deepcopy(ref), backend="triton").eval()
    x = torch.randn(*shape)
    xr, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_r, out_m = ref(xr), mine(xm)
    assert_close(out_m, out_r, rel=1e-4, what="eval output")
    g = torch.randn_like(out_r)
    out_r.backward(g), out_m.backward(g)
    assert_close(xm.grad, xr.grad, rel=1e-4, what="x.grad")
    params_m = dict(mine.named_parameters())
    for pname, p in ref.named_parameters():
        assert_close(params_m[pname].grad, p.grad, rel=1e-4, atol=1e-12, what=f"grad of {pname}")
    for (bname, b), (_, r) in zip(mine.named_buffers(), ref.named_buffers()):
        assert torch.equal(b, r), bname


@needs_triton_cpu
def test_eval_mode_with_gradients_and_folded_bn_warns_once(monkeypatch):
    """A BN folded into its conv leaves the training op nothing to differentiate through: the reference runs,
    and a one-time warning says why; under no_grad the eval kernels still run."""
    monkeypatch.setattr(utils, "_warned", set())
    torch.manual_seed(4)
    ref = randomize_bn(SCDown(6, 10, 3, 2), 4).eval()
    for conv in (ref.cv1, ref.cv2):
        conv.fuse_bn()
    mine = FusedSCDown.from_module(copy.deepcopy(ref), backend="triton").eval()
    x = torch.randn(2, 6, 7, 6, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="folded into its conv"):
        out = mine(x)
    assert_close(out, ref(x), rel=1e-6)
    monkeypatch.setattr(dropin.DropIn, "reference_forward", lambda *a: pytest.fail("the reference forward ran"))
    with torch.no_grad():
        mine(x)


def test_channels_last_on_cuda_only(monkeypatch, nano):
    """On CUDA accelerate() converts the model to channels_last (the layout the kernels read with vector loads);
    on the CPU, and with backend="reference", the layout stays."""
    stem = lambda m: m.model[0].conv.weight  # noqa: E731  (a dense 3x3 conv: its two layouts differ)
    assert stem(accelerate(copy.deepcopy(nano), backend="auto")).is_contiguous()
    monkeypatch.setattr(importlib.import_module("yolov10_kernels.accelerate"), "_on_cuda", lambda model: True)
    assert stem(accelerate(copy.deepcopy(nano), backend="reference")).is_contiguous()
    m = accelerate(nano, backend="auto")
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in m.parameters() if p.dim() == 4)
    assert not stem(m).is_contiguous()
