"""YOLOv10 loss: parity (value and gradients w.r.t. all six prediction maps) with ultralytics 8.3.253's
E2EDetectLoss, hyper-parameters, the assigner seam and input validation."""
import pytest
import torch

from yolov10 import YOLOv10
from yolov10.assign import TaskAlignedAssigner
from yolov10.loss import DEFAULT_HYP, DetectionLoss, V10DetectLoss

from oracle import Lazy

# the parity oracle, imported on first use (tests/oracle.py)
get_cfg = Lazy("ultralytics.cfg", "get_cfg")
DetectionModel = Lazy("ultralytics.nn.tasks", "DetectionModel")
DEFAULT_CFG = Lazy("ultralytics.utils", "DEFAULT_CFG")
E2EDetectLoss = Lazy("ultralytics.utils.loss", "E2EDetectLoss")

NC = 5
H, W = 64, 96
STRIDES = (8, 16, 32)
RTOL = 1e-5


@pytest.fixture(scope="module")
def oracle_model():
    m = DetectionModel("yolov10n.yaml", nc=NC, verbose=False)
    m.args = get_cfg(DEFAULT_CFG)
    return m


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return YOLOv10("yolov10n", nc=NC)


def random_maps(g, b, h=H, w=W, nc=NC, scale=1.0):
    def maps():
        return [(torch.randn(b, 64 + nc, h // s, w // s, generator=g) * scale).requires_grad_(True) for s in STRIDES]
    return {"one2many": maps(), "one2one": maps()}


def make_batch(g, counts, nc=NC, max_wh=0.5):
    n = sum(counts)
    batch_idx = torch.cat([torch.full((k,), float(i)) for i, k in enumerate(counts)]) if n else torch.zeros(0)
    wh = torch.rand(n, 2, generator=g) * max_wh + 0.02
    xy = wh / 2 + torch.rand(n, 2, generator=g) * (1 - wh)  # inside the image
    return {"img": torch.zeros(len(counts), 3, H, W), "batch_idx": batch_idx,
            "cls": torch.randint(0, nc, (n, 1), generator=g).float(), "bboxes": torch.cat((xy, wh), 1)}


def adversarial_batch():
    """Image 0: no boxes; image 1: border-touching, tiny, duplicate boxes; image 2: 200 boxes."""
    g = torch.Generator().manual_seed(11)
    rows = [  # normalised xywh
        [0.5, 0.5, 1.0, 1.0],  # the whole image
        [0.05, 0.05, 0.1, 0.1],  # top-left corner, touching two borders
        [0.95, 0.9, 0.1, 0.2],  # bottom-right corner
        [0.5, 0.0625, 0.2, 0.125],  # touching the top border
        [0.3, 0.3, 0.004, 0.004],  # tiny (< 1 px)
        [0.6, 0.6, 0.02, 0.03],  # small (2 px)
        [0.4, 0.7, 0.3, 0.2],  # a duplicated box
        [0.4, 0.7, 0.3, 0.2],
    ]
    b1 = torch.tensor(rows)
    big = make_batch(g, [200], max_wh=0.3)
    return {
        "batch_idx": torch.cat((torch.ones(len(rows)), torch.full((200,), 2.0))),
        "cls": torch.cat((torch.tensor([0, 1, 2, 3, 4, 0, 1, 1.0])[:, None], big["cls"])),
        "bboxes": torch.cat((b1, big["bboxes"])),
    }


def maps_list(preds):
    return preds["one2many"] + preds["one2one"]


def compare(ours_fn, ref_fn, preds, batch):
    """Our scalar loss and 6 items vs the oracle's loss vector (summed) and 3 items (summed over branches);
    gradients w.r.t. all six maps."""
    loss, items = ours_fn(preds, batch)
    ref_loss, ref_items = ref_fn(preds, batch)
    assert loss.dim() == 0 and items.shape == (6,) and not items.requires_grad
    torch.testing.assert_close(loss, ref_loss.sum(), rtol=RTOL, atol=0)
    torch.testing.assert_close(items[:3] + items[3:], ref_items, rtol=RTOL, atol=1e-7)
    grads = torch.autograd.grad(loss, maps_list(preds))
    ref_grads = torch.autograd.grad(ref_loss.sum(), maps_list(preds))
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        scale = b.abs().max().clamp(min=1e-12)
        assert (a - b).abs().max() <= RTOL * scale, f"map {i}: max grad diff {(a - b).abs().max()} vs scale {scale}"
    return loss, items


def test_parity_random_maps(model, oracle_model):
    ours, ref = V10DetectLoss(model), E2EDetectLoss(oracle_model)
    g = torch.Generator().manual_seed(0)
    for counts in ([0, 200, 5], [3], [1, 0]):
        preds = random_maps(g, len(counts))
        loss, items = compare(ours, ref, preds, make_batch(g, counts))
        assert (items > 0).all()  # every branch has positives and all three terms
    # per branch the values are identical to the oracle's
    preds = random_maps(g, 2)
    batch = make_batch(g, [4, 9])
    for mine, theirs, key in ((ours.one2many, ref.one2many, "one2many"), (ours.one2one, ref.one2one, "one2one")):
        a, b = mine(preds[key], batch), theirs(preds[key], batch)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_parity_adversarial_boxes(model, oracle_model):
    ours, ref = V10DetectLoss(model), E2EDetectLoss(oracle_model)
    g = torch.Generator().manual_seed(1)
    batch = adversarial_batch()
    compare(ours, ref, random_maps(g, 3), batch)
    compare(ours, ref, random_maps(g, 3, scale=3.0), batch)  # peaky DFL/class distributions


def test_parity_no_boxes_in_batch(model, oracle_model):
    ours, ref = V10DetectLoss(model), E2EDetectLoss(oracle_model)
    g = torch.Generator().manual_seed(2)
    preds = random_maps(g, 2)
    batch = make_batch(g, [0, 0])
    loss, items = compare(ours, ref, preds, batch)
    assert items[[0, 2, 3, 5]].eq(0).all() and items[[1, 4]].gt(0).all()  # only background BCE


def test_parity_on_model_output(model, oracle_model):
    """The real train-mode output of yolov10.YOLOv10 (head bias init, detached one-to-one inputs)."""
    ours, ref = V10DetectLoss(model), E2EDetectLoss(oracle_model)
    g = torch.Generator().manual_seed(3)
    model.train()
    preds = model(torch.rand(2, 3, H, W, generator=g))
    assert set(preds) == {"one2many", "one2one"}
    compare(ours, ref, preds, make_batch(g, [6, 2]))
    # a full backward reaches the model; the one-to-one loss does not reach the backbone
    loss, _ = ours(preds, make_batch(g, [6, 2]))
    model.zero_grad()
    loss.backward()
    assert model.head.one2one_cv2[0][-1].weight.grad.abs().sum() > 0
    assert model.model[0].conv.weight.grad.abs().sum() > 0
    model.zero_grad()
    preds = model(torch.rand(2, 3, H, W, generator=g))
    loss_o2o = ours.one2one(preds["one2one"], make_batch(g, [6, 2]))[0].sum()
    loss_o2o.backward()
    assert model.model[0].conv.weight.grad is None or model.model[0].conv.weight.grad.abs().sum() == 0
    model.zero_grad()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_parity_half_precision_maps(model, oracle_model, dtype):
    """Half-precision maps (as under autocast) follow the oracle's dtype path too."""
    g = torch.Generator().manual_seed(12)
    preds = {k: [x.detach().to(dtype).requires_grad_(True) for x in v] for k, v in random_maps(g, 3).items()}
    loss, items = V10DetectLoss(model)(preds, adversarial_batch())
    ref_loss, ref_items = E2EDetectLoss(oracle_model)(preds, adversarial_batch())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, ref_loss.sum(), rtol=RTOL, atol=0)
    torch.testing.assert_close(items[:3] + items[3:], ref_items, rtol=RTOL, atol=1e-7)
    for a, b in zip(torch.autograd.grad(loss, maps_list(preds)), torch.autograd.grad(ref_loss.sum(), maps_list(preds))):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=RTOL, atol=1e-7)


def test_wrapped_model(model):
    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel
        def __init__(self, module):
            super().__init__()
            self.module = module

    g = torch.Generator().manual_seed(13)
    preds, batch = random_maps(g, 2), make_batch(g, [2, 2])
    a, b = V10DetectLoss(Wrapper(model))(preds, batch), V10DetectLoss(model)(preds, batch)
    assert torch.equal(a[0], b[0])


def test_scaling_convention(model):
    ours = V10DetectLoss(model)
    g = torch.Generator().manual_seed(4)
    for b in (1, 3):
        preds = random_maps(g, b)
        loss, items = ours(preds, make_batch(g, [3] * b))
        torch.testing.assert_close(loss, items.sum() * b, rtol=1e-6, atol=0)


def test_hyperparameters(model, oracle_model):
    assert V10DetectLoss(model).hyp == DEFAULT_HYP == {"box": 7.5, "cls": 0.5, "dfl": 1.5}
    override = {"box": 2.0, "cls": 1.25, "dfl": 0.5}
    g = torch.Generator().manual_seed(5)
    preds, batch = random_maps(g, 2), make_batch(g, [4, 7])
    saved = oracle_model.args
    try:
        oracle_model.args = get_cfg(DEFAULT_CFG, overrides=override)
        ref = E2EDetectLoss(oracle_model)
        # from a hyp dict (other keys ignored) ...
        compare(V10DetectLoss(model, hyp={**override, "lr0": 0.1}), ref, preds, batch)
        # ... and from model.args (ultralytics namespace), with hyp taking precedence
        assert V10DetectLoss(oracle_model).hyp == override
        assert V10DetectLoss(oracle_model, hyp={"box": 3.0}).hyp == {**override, "box": 3.0}
        compare(V10DetectLoss(oracle_model), ref, preds, batch)
    finally:
        oracle_model.args = saved
    with pytest.raises(ValueError, match="box"):
        V10DetectLoss(model, hyp={"box": "big"})


def test_assigner_seam(model):
    """A replacement assigner is built through assigner_factory(topk=, num_classes=, alpha=, beta=)."""
    built = []

    class Recording(TaskAlignedAssigner):
        calls = 0

        def forward(self, *args):
            Recording.calls += 1
            return super().forward(*args)

    def factory(**kw):
        built.append(kw)
        return Recording(**kw)

    g = torch.Generator().manual_seed(6)
    preds, batch = random_maps(g, 2), make_batch(g, [5, 1])
    loss, items = V10DetectLoss(model, assigner_factory=factory)(preds, batch)
    assert sorted(kw["topk"] for kw in built) == [1, 10]
    assert all(kw["num_classes"] == NC and kw["alpha"] == 0.5 and kw["beta"] == 6.0 for kw in built)
    assert Recording.calls == 2
    ref_loss, ref_items = V10DetectLoss(model)(preds, batch)
    assert torch.equal(loss, ref_loss) and torch.equal(items, ref_items)
    # the class itself is a valid factory
    loss2, _ = V10DetectLoss(model, assigner_factory=TaskAlignedAssigner)(preds, batch)
    assert torch.equal(loss2, ref_loss)


def test_detection_loss_standalone():
    g = torch.Generator().manual_seed(7)
    preds, batch = random_maps(g, 2), make_batch(g, [2, 3])
    branch = DetectionLoss(nc=NC, stride=STRIDES, tal_topk=10)
    vec, items = branch(preds["one2many"], batch)
    assert vec.shape == (3,) and torch.equal(vec.detach(), items * 2)


def test_integer_and_flat_targets_accepted(model):
    g = torch.Generator().manual_seed(8)
    preds, batch = random_maps(g, 2), make_batch(g, [3, 4])
    ref = V10DetectLoss(model)(preds, batch)
    batch2 = {"batch_idx": batch["batch_idx"].long()[:, None], "cls": batch["cls"].long().view(-1),
              "bboxes": batch["bboxes"].double()}
    out = V10DetectLoss(model)(preds, batch2)
    assert torch.equal(ref[0], out[0]) and torch.equal(ref[1], out[1])


@pytest.mark.parametrize("edit, match", [
    (lambda b: b.pop("cls"), "missing"),
    (lambda b: b.pop("batch_idx"), "missing"),
    (lambda b: b.update(bboxes=b["bboxes"][:, :3]), "bboxes"),
    (lambda b: b.update(bboxes=b["bboxes"][None]), "bboxes"),
    (lambda b: b.update(cls=b["cls"][:-1]), "cls"),
    (lambda b: b.update(batch_idx=b["batch_idx"][:-1]), "batch_idx"),
    (lambda b: b["cls"].__setitem__(0, NC), "class ids"),
    (lambda b: b["cls"].__setitem__(0, -1), "class ids"),
    (lambda b: b["batch_idx"].__setitem__(0, 2), "batch_idx"),
])
def test_bad_batch_raises_value_error(model, edit, match):
    g = torch.Generator().manual_seed(9)
    preds, batch = random_maps(g, 2), make_batch(g, [3, 2])
    edit(batch)
    with pytest.raises(ValueError, match=match):
        V10DetectLoss(model)(preds, batch)


def test_bad_preds_raise_value_error(model):
    g = torch.Generator().manual_seed(10)
    preds, batch = random_maps(g, 2), make_batch(g, [1, 1])
    loss_fn = V10DetectLoss(model)
    with pytest.raises(ValueError, match="one2many"):
        loss_fn(preds["one2many"], batch)
    with pytest.raises(ValueError, match="one2many"):
        loss_fn({"one2one": preds["one2one"]}, batch)
    with pytest.raises(ValueError, match="prediction maps"):
        loss_fn({"one2many": preds["one2many"][:2], "one2one": preds["one2one"]}, batch)
    with pytest.raises(ValueError, match=r"\(B, 69, H, W\)"):
        loss_fn({"one2many": [m[:, :-1] for m in preds["one2many"]], "one2one": preds["one2one"]}, batch)
