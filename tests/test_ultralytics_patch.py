"""yolov10_kernels.patch_ultralytics against the installed ultralytics itself: its TaskAlignedAssigner, its losses
on its own models, and its trainer.

This file runs twice in one suite run: in process against the oracle ultralytics 8.3.253, and in a subprocess
against ultralytics 8.4.190 (tests/test_ultralytics84.py sets PYTHONPATH=.venv/ultralytics84), so every check
below holds for both versions' semantics (8.4: stride_val enlargement, topk2, E2ELoss).
"""
import copy
import functools
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from helpers import assert_close, assert_same_assignment
from oracle import module as oracle

NC = 80
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def unpatched():
    """Every test starts and ends with ultralytics unpatched."""
    from yolov10_kernels.integrations.ultralytics import unpatch_ultralytics
    unpatch_ultralytics()
    yield
    unpatch_ultralytics()


def test_installed_version():
    """The oracle this run tests against (tests/test_ultralytics84.py runs this file under 8.4.190)."""
    assert oracle("ultralytics").__version__ == os.environ.get("YOLOV10_EXPECT_ULTRALYTICS", "8.3.253")


def ultra_version():
    return tuple(int(p) for p in oracle("ultralytics").__version__.split(".")[:2])


def tal_assigner(**kw):
    """The installed class, with 8.4's stride argument where it exists."""
    tal = oracle("ultralytics.utils.tal")
    if ultra_version() >= (8, 4):
        kw.setdefault("stride", [8.0, 16.0, 32.0])
    else:
        kw.pop("topk2", None)
    return tal.TaskAlignedAssigner(**kw)


def anchors(img):
    from yolov10.head import make_anchors
    feats = [torch.zeros(1, 1, img // s, img // s) for s in (8, 16, 32)]
    ap, st = make_anchors(feats, [8.0, 16.0, 32.0], 0.5)
    return ap * st


def adversarial_inputs(B, M, img, seed, case):
    """Random gts plus the hard cases: padded, zero-area, tiny (< stride_val), partly outside, edges exactly on
    anchor centres, duplicates, and far predictions (all-zero metrics: exact ties)."""
    g = torch.Generator().manual_seed(seed)
    ap = anchors(img)
    A = ap.shape[0]
    c = torch.rand(B, M, 2, generator=g) * img
    wh = torch.rand(B, M, 2, generator=g) * img / 4 + 1
    gt = torch.cat([c - wh / 2, c + wh / 2], -1)
    if case in ("mixed", "ties"):
        n = max(M // 8, 1)
        gt[:, :n, 2:] = gt[:, :n, :2]                              # zero area
        gt[:, n:2 * n, 2:] = gt[:, n:2 * n, :2] + 2.5              # tiny: enlarged by 8.4
        gt[:, 2 * n:3 * n, :2] -= img / 3                          # partly outside the image
        gt[:, 3 * n:4 * n] = torch.floor(gt[:, 3 * n:4 * n] / 8) * 8 + 4  # edges on anchor centres
        gt[:, 4 * n:5 * n] = gt[:, 5 * n:6 * n]                    # duplicates
    lab = torch.randint(0, NC, (B, M, 1), generator=g).float()
    mask = (torch.rand(B, M, 1, generator=g) >= 0.2).float()
    gt, lab = gt * mask, lab * mask
    if case == "ties":  # predictions away from every gt: zero overlaps, zero metrics
        pc = torch.rand(B, A, 2, generator=g) * img
        pd = torch.cat([pc - 1, pc + 1], -1)
    else:
        pick = torch.randint(0, max(M, 1), (B, A), generator=g)
        base = torch.gather(gt, 1, pick[..., None].expand(-1, -1, 4)) if M else torch.rand(B, A, 4, generator=g)
        pd = base + torch.randn(B, A, 4, generator=g) * 4
    scores = torch.rand(B, A, NC, generator=g)
    return scores, pd, ap, lab, gt, mask


TOPKS = [(1, None), (7, 1), (10, None), (13, None)]  # v10 o2o (8.3), E2ELoss o2o (8.4), o2m, v8


@pytest.mark.parametrize("topk,topk2", TOPKS, ids=[f"topk{k}-{k2}" for k, k2 in TOPKS])
@pytest.mark.parametrize("B,M,img,case", [(2, 0, 128, "mixed"), (3, 24, 160, "mixed"), (2, 30, 256, "ties"),
                                          (64, 6, 128, "mixed"), (1, 200, 320, "mixed")])
def test_assigner_matches_installed(B, M, img, case, topk, topk2):
    from yolov10_kernels.integrations.ultralytics import fused_assigner_class
    x = adversarial_inputs(B, M, img, seed=B * 1000 + M, case=case)
    kw = dict(topk=topk, num_classes=NC, alpha=0.5, beta=6.0, topk2=topk2)
    ref = tal_assigner(**kw)(*x)
    fused = fused_assigner_class()
    calls = fused.calls
    if ultra_version() >= (8, 4):
        kw["stride"] = [8.0, 16.0, 32.0]
    else:
        kw.pop("topk2")
    ours = fused(**kw)(*x)
    assert_same_assignment(ours, ref)
    assert fused.calls == calls + (M > 0)


def test_assigner_many_gts():
    """M = 5000 gts in one image (the reference's (B, M, A) tensors stay small at 160 px)."""
    from yolov10_kernels.integrations.ultralytics import fused_assigner_class
    x = adversarial_inputs(1, 5000, 160, seed=5, case="mixed")
    for topk, topk2 in [(10, None), (7, 1)]:
        kw = dict(topk=topk, num_classes=NC, alpha=0.5, beta=6.0, topk2=topk2)
        ref = tal_assigner(**kw)(*x)
        kw.update(stride=[8.0, 16.0, 32.0]) if ultra_version() >= (8, 4) else kw.pop("topk2")
        assert_same_assignment(fused_assigner_class()(**kw)(*x), ref)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_assigner_pow_position_parity(threads):
    """ATen computes the metric's pow(beta) over the batch's flat array of (image, gt, anchor) pairs: SLEEF in the
    vectorised loop, a double pow in the scalar tail of each chunk (> 32768 pairs: one chunk per thread), so an
    element's last bits depend on its position; the op reproduces that across chunkings (on constructed inputs the
    old SLEEF-everywhere op passed too: the real-batch proof is test_two_epochs_patched_equals_plain)."""
    from yolov10_kernels.integrations.ultralytics import fused_assigner_class
    x = adversarial_inputs(6, 300, 320, seed=7, case="mixed")
    pairs = int((((x[2][None, None] > x[4][..., None, :2]).all(-1) & (x[2][None, None] < x[4][..., None, 2:]).all(-1))
                 & x[5].bool()).sum())
    assert pairs > 32768 * 2 and pairs % 32, pairs  # several chunks, each with a scalar tail
    kw = dict(topk=10, num_classes=NC, alpha=0.5, beta=6.0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ref = tal_assigner(**kw)(*x)
        if ultra_version() >= (8, 4):
            kw["stride"] = [8.0, 16.0, 32.0]
        ours = fused_assigner_class()(**kw)(*x)
    finally:
        torch.set_num_threads(before)
    assert_same_assignment(ours, ref)

# --------------------------------------------------------------------------------------------------------
# ultralytics' own losses on its own models
# --------------------------------------------------------------------------------------------------------
def crowded_batch(imgsz=128, n=400, seed=0):
    """Image 0 empty, image 1 with n boxes: random, tiny (a few px) and on the borders."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 0.9 + 0.05
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.01
    wh[: n // 4] = 2.0 / imgsz                          # tiny
    xy[n // 4: n // 2, 0] = wh[n // 4: n // 2, 0] / 2   # touching the left border
    xy[n // 2: 5 * n // 8, 1] = 1 - wh[n // 2: 5 * n // 8, 1] / 2  # touching the bottom border
    return {"img": torch.rand(2, 3, imgsz, imgsz, generator=g), "batch_idx": torch.ones(n),
            "cls": torch.randint(0, NC, (n, 1), generator=g).float(), "bboxes": torch.cat([xy, wh], 1)}


def build_model(cfg):
    tasks, get_cfg = oracle("ultralytics.nn.tasks"), oracle("ultralytics.cfg").get_cfg
    torch.manual_seed(0)
    model = tasks.DetectionModel(cfg, nc=NC, verbose=False)
    model.args = get_cfg()
    return model.train()


def loss_vector(items):
    """Loss items as one tensor (8.4 gives {name: item}, in a fixed order)."""
    return torch.stack([v.detach() for v in items.values()]) if isinstance(items, dict) else items.detach().clone()


def loss_and_grads(model, batch):
    loss, items = model.loss(batch)
    model.zero_grad()
    loss.sum().backward()
    return items, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("cfg", ["yolov10n.yaml", "yolov8n.yaml"])
def test_loss_parity(cfg):
    """Loss items and gradients of ultralytics' loss (v10: E2EDetectLoss / E2ELoss, v8: v8DetectionLoss) with
    and without the patch on one model (an empty image beside one with 400 boxes)."""
    from yolov10_kernels import patch_ultralytics
    from yolov10_kernels.integrations.ultralytics import fused_assigner_class
    plain = build_model(cfg)
    patched = copy.deepcopy(plain)
    sd_keys = list(plain.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = patch_ultralytics(patched)
        assert patch_ultralytics(patched) == report  # twice is harmless
    assert list(patched.state_dict()) == sd_keys
    v10 = cfg.startswith("yolov10")
    assert (report["modules"]["cls_head"] > 0 and report["modules"]["scdown"] > 0) == v10
    assert any("no module the kernels fuse" in str(w.message) for w in caught) == (not v10)
    batch = crowded_batch()
    ref_items, ref_grads = loss_and_grads(plain, batch)
    calls = fused_assigner_class().calls
    items, grads = loss_and_grads(patched, batch)
    assert fused_assigner_class().calls == calls + (2 if v10 else 1)
    assert torch.equal(loss_vector(items), loss_vector(ref_items)), (items, ref_items)
    assert grads.keys() == ref_grads.keys()
    different = [n for n in grads if not torch.equal(grads[n], ref_grads[n])]
    assert not different, f"gradients differ: {different}"


def test_model_patch_reaches_built_loss():
    from yolov10_kernels import patch_ultralytics
    from yolov10_kernels.integrations.ultralytics import fused_assigner_class
    model = build_model("yolov10n.yaml")
    model.loss(crowded_batch(n=10))  # the loss exists before the patch
    report = patch_ultralytics(model, modules=False)
    assert "modules" not in report and report["assigner"].startswith("2 assigner")
    for part in (model.criterion.one2many, model.criterion.one2one):
        assert type(part.assigner) is fused_assigner_class()


# cfg: (model class, fused cls branches, {layer class: fused attention modules}, head left alone); 26: 8.4 only
FAMILIES = {
    "yolov8n.yaml": ("DetectionModel", 0, {}, None),                 # legacy dense head: 0, no warning
    "yolov10n.yaml": ("DetectionModel", 6, {"PSA": 1}, None),
    "yolo11n.yaml": ("DetectionModel", 3, {"C2PSA": 1}, None),
    "yolo11n-seg.yaml": ("SegmentationModel", 3, {"C2PSA": 1}, None),
    "yolo11n-pose.yaml": ("PoseModel", 3, {"C2PSA": 1}, None),
    "yolo11n-obb.yaml": ("OBBModel", 3, {"C2PSA": 1}, None),
    "yolo12n.yaml": ("DetectionModel", 3, {}, None),                 # A2C2f's area attention stays
    "yolov8s-worldv2.yaml": ("WorldModel", 0, {}, "WorldDetect"),
    "yoloe-11s-seg.yaml": ("YOLOESegModel", 0, {"C2PSA": 1}, "YOLOEDetect"),
    "yolo26n.yaml": ("DetectionModel", 6, {"C2PSA": 1, "C3k2": 1}, None),
    "yolo26n-seg.yaml": ("SegmentationModel", 6, {"C2PSA": 1, "C3k2": 1}, None),
    "yolo26n-pose.yaml": ("PoseModel", 6, {"C2PSA": 1, "C3k2": 1}, None),
    "yolo26n-obb.yaml": ("OBBModel", 6, {"C2PSA": 1, "C3k2": 1}, None),
}


@pytest.mark.parametrize("cfg", list(FAMILIES))
def test_swap_counts_per_family(cfg):
    """Every non-legacy Detect-family head's light cls branches (cv3, and one2one_cv3 where end-to-end) and every
    Attention, counted per enclosing block; legacy (YOLOv8) heads give 0 without a warning; YOLOE / World heads
    are left alone with a reason. The fused branches are exactly the light ones, state_dict keys unchanged."""
    from yolov10_kernels.integrations.ultralytics import swap_modules
    from yolov10_kernels.modules.cls_head import FusedClsHead
    if cfg.startswith("yolo26") and ultra_version() < (8, 4):
        assert not hasattr(oracle("ultralytics.nn.modules.head"), "Pose26")  # 8.3 has no YOLO26 to patch
        return
    cls, heads, attention, left = FAMILIES[cfg]
    torch.manual_seed(0)
    model = getattr(oracle("ultralytics.nn.tasks"), cls)(cfg, verbose=False)
    keys = list(model.state_dict())
    light = sum(len(getattr(m, b)) for m in model.modules() for b in ("cv3", "one2one_cv3")
                if isinstance(getattr(m, b, None), torch.nn.ModuleList) and all(
                    isinstance(s[0], torch.nn.Sequential) for s in getattr(m, b)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = swap_modules(model, backend="reference")
    assert not caught, [str(w.message) for w in caught]
    assert report["cls_head"] == heads == (light if left is None else 0)
    assert report["attention"] == attention and report["psa"] == sum(attention.values())
    assert set(report.get("left_alone", {})) == ({left} if left else set())
    assert sum(isinstance(m, FusedClsHead) for m in model.modules()) == heads
    assert list(model.state_dict()) == keys
    assert swap_modules(model, backend="reference") == report  # twice is harmless



def counting(monkeypatch, owner, name, counts):
    """Wrap owner.name so that counts[name] says how often it ran."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def outputs_and_grads(module, x):
    """Output and the gradients of <out, g> (g random) w.r.t. x and every parameter, keyed by name."""
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    names, params = zip(*[(n, p) for n, p in module.named_parameters()])
    grads = torch.autograd.grad(out, (x, *params), g)
    return {"out": out.detach(), **dict(zip(("input", *names), grads))}


def first_of_each_kind(model, kinds):
    found = {}
    for name, m in model.named_modules():
        for kind in kinds:
            if isinstance(m, kind):
                found.setdefault(kind.__name__, name)
    return found


def test_triton_dropins_in_yolov10n(monkeypatch):
    """patch_ultralytics(model, backend="triton") on ultralytics' yolov10n (64 px, TRITON_INTERPRET=1 on the
    CPU): every CIB, SCDown, PSA (its Attention) and light cls branch becomes a drop-in, state_dict keys stay;
    the kernels give the eval outputs of the plain model, and the train-mode outputs, gradients and BN statistics
    of the first module of each kind (the whole model's train step through the interpreter takes minutes)."""
    from yolov10_kernels import patch_ultralytics
    from yolov10_kernels.modules import dropin, psa
    from yolov10_kernels.modules.cib import FusedCIB
    from yolov10_kernels.modules.cls_head import FusedClsHead
    from yolov10_kernels.modules.scdown import FusedSCDown
    block, head = oracle("ultralytics.nn.modules.block"), oracle("ultralytics.nn.modules.head")
    plain = build_model("yolov10n.yaml")
    patched = copy.deepcopy(plain)
    heads = [m for m in plain.modules() if isinstance(m, head.v10Detect)]
    expect = {"cib": sum(type(m) is block.CIB for m in plain.modules()),
              "scdown": sum(type(m) is block.SCDown for m in plain.modules()),
              "psa": sum(type(m) is block.Attention for m in plain.modules()),
              "cls_head": sum(len(getattr(h, b)) for h in heads for b in ("cv3", "one2one_cv3"))}
    assert min(expect.values()) > 0
    assert patch_ultralytics(patched, backend="triton")["modules"] == {**expect, "attention": {"PSA": expect["psa"]}}
    assert list(patched.state_dict()) == list(plain.state_dict())
    kinds = (FusedCIB, FusedSCDown, psa.FusedPSA, FusedClsHead)
    names = first_of_each_kind(patched, kinds)
    assert len(names) == len(kinds) and isinstance(patched.get_submodule(names["FusedPSA"]).attn, psa.FusedAttention)
    counts = {}
    for owner, name in ((psa, "psa_attention"), (dropin.ChainDropIn, "folded"), (dropin, "chain_train")):
        counting(monkeypatch, owner, name, counts)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, ours = plain.eval()(x), patched.eval()(x)
    assert counts == {"psa_attention": expect["psa"], "folded": expect["cib"] + expect["scdown"] + expect["cls_head"]}
    assert_close(ours[0], ref[0], rel=1e-5, what="eval detections")
    inputs = {}
    probe = copy.deepcopy(plain).train()  # the plain modules' own statistics stay untouched
    hooks = [probe.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: inputs.setdefault(n, a[0]))
             for n in names.values()]
    probe(x)
    for h in hooks:
        h.remove()
    for kind, name in names.items():
        a, b = plain.get_submodule(name).train(), patched.get_submodule(name).train()
        want, got = outputs_and_grads(a, inputs[name]), outputs_and_grads(b, inputs[name])
        for key in want:
            assert_close(got[key], want[key], rtol=1e-4, atol=1e-4 * max(1.0, want[key].abs().max().item()),
                         what=f"{kind} {name} {key}")
        for (key, ba), bb in zip(a.named_buffers(), b.buffers()):
            assert_close(bb, ba, **({} if ba.dtype == torch.long else dict(rtol=1e-5, atol=1e-6)),
                         what=f"{kind} {name} {key}")
    assert counts["psa_attention"] == 2 * expect["psa"] and counts["chain_train"] == 3


def label_sets(imgsz, crowded_only):
    """Label sets for the same two images: crowded (image 0 empty; image 1 with 120 boxes, a quarter of them 2 px,
    some on the borders), and unless crowded_only, empty (no box in the batch) and tiny (8 boxes of 1-3 px per
    image; sorted by image, as ultralytics' collate gives them and 8.4's loss expects)."""
    crowded = crowded_batch(imgsz, n=120)
    if crowded_only:
        return {"crowded": crowded}
    g = torch.Generator().manual_seed(1)
    xy, wh = torch.rand(16, 2, generator=g) * 0.9 + 0.05, (torch.rand(16, 2, generator=g) * 2 + 1) / imgsz
    tiny = {"batch_idx": (torch.arange(16) >= 8).float(), "cls": torch.randint(0, NC, (16, 1), generator=g).float(),
            "bboxes": torch.cat([xy, wh], 1)}
    empty = {"batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4)}
    return {"crowded": crowded, "empty": {**crowded, **empty}, "tiny": {**crowded, **tiny}}


def train_step_and_eval(model, labels):
    """One train-mode forward of the images and, per label set, the loss items and the gradient of every trainable
    parameter (one backward each, on the shared forward); then the buffers (BN running statistics) and the eval
    outputs."""
    images = next(iter(labels.values()))["img"]
    preds = model.train()(images)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out = {"train": [t.detach().clone() for t in torch.utils._pytree.tree_leaves(preds) if isinstance(t, torch.Tensor)]}
    for i, (name, batch) in enumerate(labels.items()):
        loss, items = model.loss(batch, preds)
        grads = torch.autograd.grad(loss.sum(), list(params.values()), retain_graph=i + 1 < len(labels))
        out[name] = loss_vector(items), dict(zip(params, grads))
    out["buffers"] = {n: b.clone() for n, b in model.named_buffers()}
    with torch.no_grad():
        out["eval"] = model.eval()(images)[0]
    return out


PARITY = {"yolo11n.yaml": 64, "yolo11s.yaml": 64, "yolo26n.yaml": 64, "yolo26s.yaml": 64}  # cfg: image size


@pytest.mark.parametrize("cfg", list(PARITY))
def test_triton_parity_yolo11_yolo26(cfg, monkeypatch):
    """patch_ultralytics(model, backend="triton") on ultralytics' own yolo11n/s and yolo26n/s (8.4 only), through
    the interpreter: one training step of the whole model with ultralytics' own loss gives the plain model's
    train outputs, loss items and every parameter gradient on crowded, empty and tiny-box labels ('s': crowded
    only, for time), its BN running statistics after the step, and its eval outputs. Every fused module ran its
    kernels (train: chain_train per light cls branch, the fused attention per Attention; eval: both again)."""
    from yolov10_kernels import patch_ultralytics
    from yolov10_kernels.modules import dropin, psa
    if cfg.startswith("yolo26") and ultra_version() < (8, 4):
        assert not hasattr(oracle("ultralytics.nn.modules.head"), "Pose26")  # 8.3 has no YOLO26 to patch
        return
    plain = build_model(cfg)
    patched = copy.deepcopy(plain)
    swapped = patch_ultralytics(patched, backend="triton")["modules"]
    assert swapped["cls_head"] > 0 and swapped["psa"] > 0
    counts = {}
    for owner, name in ((psa, "psa_attention"), (dropin.ChainDropIn, "folded"), (dropin, "chain_train")):
        counting(monkeypatch, owner, name, counts)
    labels = label_sets(PARITY[cfg], crowded_only=cfg[-6] == "s")
    want = train_step_and_eval(plain, labels)
    assert not counts
    got = train_step_and_eval(patched, labels)
    assert counts == {"chain_train": swapped["cls_head"], "psa_attention": 2 * swapped["psa"],
                      "folded": swapped["cls_head"]}, counts
    assert len(got["train"]) == len(want["train"])
    for i, (g, w) in enumerate(zip(got["train"], want["train"])):
        assert_close(g, w, rel=1e-4, what=f"{cfg} train output {i}")
    for name in labels:
        (items, grads), (ref_items, ref_grads) = got[name], want[name]
        assert_close(items, ref_items, rel=1e-4, what=f"{cfg} {name} loss items")
        # a gradient that is zero but for rounding (a BN shift the next BN normalises away) is held to the
        # model's gradient scale
        floor = 1e-3 * max(g.abs().max().item() for g in ref_grads.values())
        for key, w in ref_grads.items():
            assert_close(grads[key], w, rtol=1e-4, atol=1e-4 * max(w.abs().max().item(), floor),
                         what=f"{cfg} {name} grad {key}")
    for key, w in want["buffers"].items():
        assert_close(got["buffers"][key], w, **({} if w.dtype == torch.long else dict(rtol=1e-5, atol=1e-6)),
                     what=f"{cfg} buffer {key}")
    assert_close(got["eval"], want["eval"], rel=1e-5, what=f"{cfg} eval outputs")


def fused_shapes(model, attention_cls):
    """What the fused modules of a model see at 640 px, batch 1 (on a meta copy): {"cls_head": [per level (input
    shape, c3, nc)], "attention": {(input shape, heads, key dim, head dim)}, "psa": {input shape of each block
    holding one}}."""
    from yolov10_kernels.modules.cls_head import light_shape
    found = {"cls_head": {}, "attention": set(), "psa": set()}
    meta, x = copy.deepcopy(model).to("meta").train(), torch.empty(1, 3, 640, 640, device="meta")
    for name, m in meta.named_modules():
        if isinstance(m, attention_cls):
            m.register_forward_pre_hook(lambda m, a: found["attention"].add(
                (tuple(a[0].shape), m.num_heads, m.key_dim, m.head_dim)))
        elif (hasattr(m, "attn") and hasattr(m, "cv1")) or type(m).__name__ == "C2PSA":  # PSA, C2PSA
            m.register_forward_pre_hook(lambda m, a: found["psa"].add(tuple(a[0].shape)))
        elif light_shape(m) and name.endswith((".cv3.0", ".cv3.1", ".cv3.2")):  # one set of branches
            m.register_forward_pre_hook(lambda m, a, i=int(name[-1]): found["cls_head"].__setitem__(
                i, (tuple(a[0].shape), m[0][1].conv.out_channels, m[2].out_channels)))
    with torch.no_grad():  # yolov10's forward checks x against its stride's values, which meta tensors lack
        meta.head(meta.features(x)) if hasattr(meta, "features") else meta(x)
    return {**found, "cls_head": [found["cls_head"][i] for i in sorted(found["cls_head"])]}


def test_bench_rows_have_the_yolo11_yolo26_shapes():
    """The bench's and the GPU session's yolov10n/s cls_head and psa rows stand for YOLO11 and YOLO26 as well
    (bench/ops.SAME_SHAPES): ultralytics' yolo11n/s and yolo26n/s (8.4) have yolov10<scale>'s light cls branches
    (inputs and widths) and attention (input, heads, key and head dims), and their C2PSA takes PSA's input."""
    from bench import ops
    from yolov10.modules import Attention
    tasks = oracle("ultralytics.nn.tasks")
    for scale, models in ops.SAME_SHAPES.items():
        want = fused_shapes(ops.build_model(scale), Attention)
        assert len(want["cls_head"]) == 3 and len(want["attention"]) == len(want["psa"]) == 1, want
        for name in models:
            if name.startswith("yolo26") and ultra_version() < (8, 4):
                continue  # 8.3 has no YOLO26 (test_swap_counts_per_family checks that)
            torch.manual_seed(0)
            got = fused_shapes(tasks.DetectionModel(f"{name}.yaml", nc=NC, verbose=False),
                               oracle("ultralytics.nn.modules.block").Attention)
            assert got == want, (name, got, want)


def test_bad_input(monkeypatch):
    import ultralytics

    from yolov10_kernels import patch_ultralytics
    from yolov10_kernels.integrations import ultralytics as integ
    loss = oracle("ultralytics.utils.loss")
    original = loss.TaskAlignedAssigner
    monkeypatch.setattr(ultralytics, "__version__", "8.2.103")
    with pytest.raises(RuntimeError, match=r">=8\.3\.0,<8\.5\.0; the installed version is 8\.2\.103"):
        patch_ultralytics()
    assert loss.TaskAlignedAssigner is original and not integ._patched  # nothing half-patched
    monkeypatch.undo()
    with pytest.raises(TypeError, match="DetectionModel or YOLO"):
        patch_ultralytics(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="backend"):
        patch_ultralytics(backend="fast")


def test_kernels_off(monkeypatch):
    from yolov10_kernels import patch_ultralytics
    monkeypatch.setenv("YOLOV10_KERNELS", "off")
    loss = oracle("ultralytics.utils.loss")
    original = loss.TaskAlignedAssigner
    assert "disabled" in patch_ultralytics()
    assert loss.TaskAlignedAssigner is original


# --------------------------------------------------------------------------------------------------------
# the trainer: class-level patch, YOLO("yolov10n.yaml").train(...)
# --------------------------------------------------------------------------------------------------------
TORCHVISION_STUB = Path(__file__).resolve().parent / "torchvision_stub"


@functools.lru_cache(maxsize=None)
def torchvision_importable():
    """Asked of a fresh process: here a failed import leaves half-imported modules behind that a second import
    takes for the real thing."""
    run = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 or "torchvision" in run.stderr, run.stderr[-3000:]
    return run.returncode == 0


@pytest.fixture
def importable_torchvision(monkeypatch):
    """`from ultralytics import YOLO` (8.3: SAM 3) and the validator (8.4) import torchvision; where the installed
    wheel cannot be imported, tests/torchvision_stub stands in for it during the test (see its docstring)."""
    if torchvision_importable():
        return
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(TORCHVISION_STUB))
    import torchvision.ops.roi_align
    for name in ("torchvision", "torchvision.ops", "torchvision.ops.roi_align"):  # gone again after the test
        monkeypatch.setitem(sys.modules, name, sys.modules[name])
    assert torchvision.__file__.startswith(str(TORCHVISION_STUB))


def train_losses(data, project, name, callbacks=None):
    YOLO = oracle("ultralytics").YOLO
    model = YOLO("yolov10n.yaml")
    for event, fn in (callbacks or {}).items():
        model.add_callback(event, fn)
    model.train(data=str(data), epochs=1, imgsz=128, batch=4, device="cpu", workers=0, seed=0, deterministic=True,
                project=str(project), name=name, exist_ok=True, plots=False, val=False, amp=False, verbose=False,
                mosaic=0.0, warmup_epochs=0)
    return loss_vector(model.trainer.tloss), model.trainer


def assert_fused_trainer(trainer, dropin):
    """The trainer's model and its EMA copy (the validation model) hold drop-ins: the swap came before the copy."""
    assert any(isinstance(m, dropin) for m in trainer.model.modules())
    assert trainer.ema is not None and any(isinstance(m, dropin) for m in trainer.ema.ema.modules())


def test_train_class_level_patch_and_callback(tmp_path, importable_torchvision):
    """YOLO("yolov10n.yaml").train(...) plain, after the class-level patch, and (unpatched again) with the
    callback form: the same losses, the fused assigner ran, the trainer's model holds the drop-ins."""
    from yolov10.data.synth import make_synthetic_dataset

    from yolov10_kernels import patch_ultralytics, unpatch_ultralytics
    from yolov10_kernels.integrations.ultralytics import callbacks, fused_assigner_class
    from yolov10_kernels.modules.scdown import FusedSCDown
    data = make_synthetic_dataset(tmp_path / "synth", n_train=12, n_val=4, imgsz=128)  # 3 iterations at batch 4
    ref, _ = train_losses(data, tmp_path / "runs", "plain")
    report = patch_ultralytics()
    assert set(report) >= {"assigner", "modules"} and patch_ultralytics() == report
    calls = fused_assigner_class().calls
    ours, trainer = train_losses(data, tmp_path / "runs", "patched")
    assert fused_assigner_class().calls - calls >= 2 * 3  # o2m + o2o per iteration
    assert_fused_trainer(trainer, FusedSCDown)
    assert torch.equal(ours, ref), (ours, ref)
    restored = unpatch_ultralytics()
    assert any("TaskAlignedAssigner" in r for r in restored) and any("setup_model" in r for r in restored)
    assert oracle("ultralytics.utils.loss").TaskAlignedAssigner is oracle("ultralytics.utils.tal").TaskAlignedAssigner

    calls = fused_assigner_class().calls
    ours, trainer = train_losses(data, tmp_path / "runs", "callback", callbacks=callbacks())
    assert fused_assigner_class().calls - calls >= 2 * 3
    assert_fused_trainer(trainer, FusedSCDown)
    assert torch.equal(ours, ref), (ours, ref)
    assert oracle("ultralytics.utils.loss").TaskAlignedAssigner is oracle("ultralytics.utils.tal").TaskAlignedAssigner
    assert not isinstance(build_model("yolov10n.yaml").model[5], FusedSCDown)  # nothing at class level


def results_losses(save_dir):
    """The loss columns of a run's results.csv (train and val), as written."""
    import csv
    with open(Path(save_dir) / "results.csv") as f:
        rows = list(csv.DictReader(f))
    return [{k.strip(): v.strip() for k, v in row.items() if "loss" in k} for row in rows]


def test_two_epochs_patched_equals_plain(tmp_path, importable_torchvision, monkeypatch):
    """Two epochs of YOLO("yolo26n.yaml").train() (8.4: E2ELoss, its one-to-many weight decaying per epoch; 8.3:
    yolo11n) plain and patched: the same results.csv losses, digit for digit; on every training batch the fused
    assigner's five outputs equal the installed class's bit for bit; the patched run's checkpoint loads in a
    fresh process without the package."""
    from yolov10.data.synth import make_synthetic_dataset

    from yolov10_kernels import patch_ultralytics
    from yolov10_kernels.integrations.ultralytics import fused_assigner_class
    from yolov10_kernels.modules.cls_head import FusedClsHead
    YOLO, tal = oracle("ultralytics").YOLO, oracle("ultralytics.utils.tal")
    cfg = "yolo26n.yaml" if ultra_version() >= (8, 4) else "yolo11n.yaml"
    data = make_synthetic_dataset(tmp_path / "synth", n_train=32, n_val=8, imgsz=96)
    args = dict(data=str(data), epochs=2, imgsz=96, batch=8, device="cpu", workers=0, seed=0, deterministic=True,
                project=str(tmp_path / "runs"), exist_ok=True, plots=False, amp=False, verbose=False, mosaic=0.0,
                warmup_epochs=0)
    # the first training of a process gives other losses than the later ones, patched or not (seen with 8.3.253
    # yolo11n; not the label cache): a one-epoch run first, so that both compared runs are later ones
    YOLO(cfg).train(name="warmup", **dict(args, epochs=1))
    plain = YOLO(cfg)
    plain.train(name="plain", **args)
    fused = fused_assigner_class()
    compared = []

    def checked(self, *a, **kw):  # the real batches: both assigners on each
        ours = fused_forward(self, *a, **kw)
        assert_same_assignment(ours, tal.TaskAlignedAssigner.forward(self, *a, **kw))
        compared.append(a[4].shape[1])
        return ours

    fused_forward = fused.forward
    monkeypatch.setattr(fused, "forward", checked)
    patch_ultralytics()
    patched = YOLO(cfg)
    patched.train(name="patched", **args)
    assert len(compared) >= 2 * 4 * (2 if cfg.startswith("yolo26") else 1) and max(compared) > 0
    assert any(isinstance(m, FusedClsHead) for m in patched.trainer.ema.ema.modules())
    want = results_losses(plain.trainer.save_dir)
    assert len(want) == 2 and results_losses(patched.trainer.save_dir) == want
    rc, out = fresh_python("-c", "import sys, torch; "
                           "ckpt = torch.load(sys.argv[1], map_location='cpu', weights_only=False); "
                           "print(sum('Fused' in type(m).__name__ for m in ckpt['model'].modules()), "
                           "'yolov10_kernels' in sys.modules)", str(patched.trainer.save_dir / "weights" / "last.pt"),
                           cwd=tmp_path)
    assert rc == 0 and "0 False" in out, out[-4000:]


def test_callback_unwraps_and_checks_up_front():
    from yolov10_kernels.integrations.ultralytics import _unwrap, callbacks
    model = build_model("yolov10n.yaml")
    wrapped = torch.compile(torch.nn.parallel.DataParallel(model))  # .module and ._orig_mod, as DDP and compile
    assert _unwrap(wrapped) is model and _unwrap(model) is model
    with pytest.raises(ValueError, match="backend"):
        callbacks(backend="fast")


def fresh_python(*args, cwd):
    """Run `python ARGS` in a fresh process (with the torchvision stub on its path where the installed wheel
    cannot be imported, and this checkout importable); returns (exit status, stdout + stderr)."""
    paths = [str(TORCHVISION_STUB)] if not torchvision_importable() else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p]
                                                      + [str(ROOT)]))
    run = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return run.returncode, run.stdout + run.stderr


def yolo_command(*args, cwd):
    return fresh_python("-m", "yolov10_kernels.integrations.yolo", *args, cwd=cwd)


def test_yolo_command_trains_patched(tmp_path):
    """The `yolo train` way in: a fresh process that never called patch_ultralytics runs ultralytics' entrypoint
    with the arguments after the patch's own: one epoch of yolov10n at 64 px (2 iterations at batch 4)."""
    import re

    from yolov10.data.synth import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "synth", n_train=8, n_val=4, imgsz=64)
    rc, out = yolo_command("--backend", "reference", "train", "model=yolov10n.yaml", f"data={data}", "epochs=1",
                           "imgsz=64", "batch=4", "device=cpu", "workers=0", f"project={tmp_path / 'runs'}",
                           "name=cli", "exist_ok=True", "plots=False", "val=False", "amp=False", cwd=tmp_path)
    assert rc == 0, out[-6000:]
    assert re.search(r"yolov10-kernels-yolo: \{.*'assigner'.*'modules'", out), out[-6000:]
    ran = re.search(r"the fused assigner ran (\d+) assignment", out)
    assert ran and int(ran.group(1)) >= 2 * 2, out[-6000:]  # o2m + o2o per iteration
    # drop-ins pickle as the modules they replaced: a fresh process loads the checkpoint without the package
    rc, out = fresh_python("-c", "import sys, torch; "
                           "ckpt = torch.load(sys.argv[1], map_location='cpu', weights_only=False); "
                           "print(sorted({type(m).__name__ for m in ckpt['model'].modules() if 'Fused' in "
                           "type(m).__name__ or type(m).__name__ in ('CIB', 'SCDown', 'PSA', 'Attention')}), "
                           "'yolov10_kernels' in sys.modules)", str(tmp_path / "runs" / "cli" / "weights" / "last.pt"),
                           cwd=tmp_path)
    assert rc == 0 and "['Attention', 'CIB', 'PSA', 'SCDown'] False" in out, out[-4000:]
    rc, out = yolo_command("--backend", "fast", "train", cwd=tmp_path)
    assert rc == 2 and "invalid choice: 'fast'" in out, out


def test_ddp_worker_script_patches(tmp_path, importable_torchvision):
    """The DDP worker script ultralytics generates (8.3 and up to 8.4.139: rebuilds the trainer from its arguments;
    8.4.140+: unpickles the parent's trainer class, model and callbacks), written after patch_ultralytics(), run in
    a fresh process (one CPU rank: ultralytics starts no CPU DDP group): it patches the model (the unpickled one
    too) and the loss before training, and the fused assigner runs."""
    import re

    from yolov10.data.synth import make_synthetic_dataset

    from yolov10_kernels import patch_ultralytics
    dist = oracle("ultralytics.utils.dist")
    trainer_cls = oracle("ultralytics.models.yolo.detect").DetectionTrainer
    cfg = "yolo26n.yaml" if ultra_version() >= (8, 4) else "yolov10n.yaml"
    data = make_synthetic_dataset(tmp_path / "synth", n_train=8, n_val=4, imgsz=64)
    report = patch_ultralytics(backend="reference")
    assert "ddp" in report
    trainer = trainer_cls(overrides=dict(model=cfg, data=str(data), epochs=1, imgsz=64, batch=4, device="cpu",
                                         workers=0, project=str(tmp_path / "runs"), name="ddp", exist_ok=True,
                                         plots=False, val=False, amp=False))
    trainer.model = trainer.get_model(cfg=cfg, weights=None, verbose=False)  # as YOLO(...).train() does
    script = dist.generate_ddp_file(trainer)
    try:
        text = Path(script).read_text()
        assert text.index("ddp_worker_patch(modules=True, assigner=True, backend='reference')") < text.index(
            ".train()")
        rc, out = fresh_python(script, cwd=tmp_path)
    finally:
        dist.ddp_cleanup(trainer, script)
    assert rc == 0, out[-6000:]
    assert re.search(r"DDP worker rank -1: \{.*'assigner'.*'modules'.*'ddp'", out), out[-6000:]
    swapped = re.search(r"rank -1: the trainer's model: \{'cib': (\d+), 'scdown': (\d+), 'psa': (\d+), "
                        r"'cls_head': (\d+)", out)
    assert swapped and int(swapped.group(3)) > 0 and int(swapped.group(4)) == 6, out[-6000:]
    ran = re.search(r"DDP worker rank -1: the fused assigner ran (\d+) assignment", out)
    assert ran and int(ran.group(1)) >= 2 * 2, out[-6000:]  # o2m + o2o per iteration


def test_op_option_errors():
    from yolov10_kernels.ops import assign
    assert assign.load()[0]
    s, pd, ap, lab, gt, mask = adversarial_inputs(1, 4, 64, seed=0, case="mixed")
    args = (s, pd, ap, lab, gt, mask, 10, NC)
    with pytest.raises(RuntimeError, match="stride_val must be a finite number >= 0"):
        assign.task_aligned_assign(*args, stride_val=-1.0)
    with pytest.raises(RuntimeError, match=r"topk2 must lie in \[0, 84\]"):
        assign.task_aligned_assign(*args, topk2=85)
    with pytest.raises(RuntimeError, match=r"gt_labels must lie in \[-80, 80\)"):
        assign.task_aligned_assign(s, pd, ap, lab + 100, gt, mask, 10, NC)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_capture():
    """The CUDA op makes no host sync (labels are checked by a device assert): it captures into a CUDA graph,
    and replays give the eager result, with every 8.4 option on."""
    from yolov10_kernels.ops import assign
    x = [t.cuda() for t in adversarial_inputs(4, 30, 256, seed=1, case="mixed")]
    opts = dict(stride_val=16.0, topk2=1, ciou84=True)
    eager = assign.task_aligned_assign(*x, 7, NC, **opts)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        assign.task_aligned_assign(*x, 7, NC, **opts)  # warm-up on a side stream, as graph capture wants
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = assign.task_aligned_assign(*x, 7, NC, **opts)
    graph.replay()
    torch.cuda.synchronize()
    for e, c in zip(eager, captured):
        assert torch.equal(e, c)
