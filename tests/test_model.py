"""The reference YOLOv10 against the official implementation (ultralytics 8.3.253 as the oracle)."""
import pytest
import torch

import yolov10
from yolov10.head import topk_postprocess
import oracle
from helpers import randomize_bn

PARAMS = {  # both heads unfused / fused one2one-only, nc=80 (official counts)
    "n": (2_775_520, 2_299_264), "s": (8_128_272, 7_248_960), "m": (16_576_768, 15_359_488),
    "b": (20_574_384, 19_065_792), "l": (25_888_688, 24_371_008), "x": (31_808_960, 29_473_568)}
PAPER_GFLOPS = {"n": 6.7, "s": 21.6, "m": 59.1, "b": 92.0, "l": 120.3, "x": 160.4}


@pytest.fixture(scope="module")
def ultra():
    tasks = oracle.module("ultralytics.nn.tasks")  # the parity oracle (scripts/test.sh installs it)
    return tasks.DetectionModel


@pytest.mark.parametrize("scale", list(PARAMS))
def test_parameter_counts_and_gflops(scale):
    model = yolov10.YOLOv10(f"yolov10{scale}")
    assert yolov10.model_info(model)["parameters"] == PARAMS[scale][0]
    info = yolov10.model_info(model.fuse())
    assert info["parameters"] == PARAMS[scale][1]
    assert abs(info["gflops"] - PAPER_GFLOPS[scale]) <= 0.1


@pytest.mark.parametrize("scale,nc,shape", [("n", 80, (1, 3, 64, 96)), ("s", 7, (3, 3, 96, 64)),
                                            ("m", 80, (2, 3, 64, 64)), ("x", 3, (1, 3, 32, 64))])
def test_matches_official_model(ultra, scale, nc, shape):
    torch.manual_seed(0)
    ref = randomize_bn(ultra(f"yolov10{scale}.yaml", nc=nc, verbose=False))
    ours = yolov10.YOLOv10(f"yolov10{scale}", nc=nc)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.rand(shape)

    ref.train(), ours.train()
    a, b = ref(x), ours(x)
    assert set(b) == {"one2many", "one2one"}
    for key in b:
        for i, (p, q) in enumerate(zip(a[key], b[key])):
            s = 8 * 2 ** i
            assert q.shape == (shape[0], 64 + nc, shape[2] // s, shape[3] // s)
            assert (p - q).abs().max() <= 1e-4
    for (k, p), q in zip(ref.state_dict().items(), ours.state_dict().values()):  # BN running stats updated alike
        assert torch.allclose(p.float(), q.float(), rtol=0, atol=1e-6), k

    ref.eval(), ours.eval()
    a, b = ref(x)[0], ours(x)
    anchors = sum((shape[2] // s) * (shape[3] // s) for s in (8, 16, 32))
    assert a.shape == b.shape == (shape[0], min(300, anchors), 6)
    assert (a - b).abs().max() <= 1e-4


def test_eval_output_is_top300_in_input_pixels():
    model = randomize_bn(yolov10.YOLOv10("yolov10n", nc=5)).eval()
    out = model(torch.rand(2, 3, 256, 320))
    assert out.shape == (2, 300, 6)
    assert torch.all(out[..., 4] >= 0) and torch.all(out[..., 4] <= 1)
    assert torch.all(out[..., 4][:, :-1] >= out[..., 4][:, 1:])  # sorted by score
    assert set(out[..., 5].unique().tolist()) <= set(range(5))


def test_topk_postprocess_two_stage():
    preds = torch.zeros(1, 5, 4 + 3)
    preds[0, :, :4] = torch.arange(20.0).view(5, 4)
    preds[0, :, 4:] = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.7, 0.0], [0.0, 0.0, 0.3],
                                    [0.2, 0.2, 0.2], [0.0, 0.05, 0.0]])
    out = topk_postprocess(preds, max_det=3, nc=3)[0]
    # anchors 0, 1, 2 are the top-3 by max score; then the 3 best (anchor, class) pairs among them
    assert out[:, 4].tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert out[:, 5].tolist() == [1, 0, 1]
    assert out[:, :4].tolist() == [preds[0, 0, :4].tolist(), preds[0, 1, :4].tolist(), preds[0, 1, :4].tolist()]


@pytest.mark.parametrize("scale", ["n", "s"])
def test_fuse_keeps_eval_output(scale):
    torch.manual_seed(1)
    model = randomize_bn(yolov10.YOLOv10(f"yolov10{scale}", nc=6)).eval()
    x = torch.rand(2, 3, 96, 128)
    head = model.head

    def decoded():  # before the top-k, whose order among near-tied scores may legitimately change
        return head.decode(head._branch(model.features(x), head.one2one_cv2, head.one2one_cv3))

    ref, ref_out = decoded(), model(x)
    model.fuse()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not hasattr(head, "cv2") and not hasattr(head, "cv3")
    out = model(x)
    assert (decoded() - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item() / 100)
    assert (out[..., 4] - ref_out[..., 4]).abs().max() <= 1e-4
    with pytest.raises(RuntimeError, match="fused"):
        model.train()(x)


def test_one2one_head_starts_as_copy_and_sees_detached_features():
    model = yolov10.YOLOv10("yolov10n", nc=4)
    head = model.head
    for a, b in zip(head.cv3.state_dict().values(), head.one2one_cv3.state_dict().values()):
        assert torch.equal(a, b)
    out = model(torch.rand(1, 3, 64, 64))
    sum(o.sum() for o in out["one2one"]).backward()
    assert all(p.grad is None for p in model.model[:-1].parameters())
    assert any(p.grad is not None for p in head.one2one_cv2.parameters())


def test_bias_init():
    head = yolov10.YOLOv10("yolov10n").head
    for cv2, cv3, s in zip(head.one2one_cv2, head.one2one_cv3, (8, 16, 32)):
        assert torch.all(cv2[-1].bias == 1.0)
        expected = torch.log(torch.tensor(5 / 80 / (640 / s) ** 2))
        assert torch.allclose(cv3[-1].bias, expected.expand(80))


def test_bn_hyperparameters():
    bns = [m for m in yolov10.YOLOv10("yolov10n").modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)
    assert all(torch.all(m.running_var == 1) and m.num_batches_tracked == 0 for m in bns)


def test_yaml_path_and_nc(tmp_path):
    path = tmp_path / "custom.yaml"
    path.write_text((yolov10.model.CFG_DIR / "yolov10s.yaml").read_text().replace("nc: 80", "nc: 12"))
    model = yolov10.YOLOv10(str(path))
    assert model.nc == 12 and model.scale == "s"
    assert yolov10.YOLOv10("yolov10s", nc=3).head.one2one_cv3[0][-1].out_channels == 3


@pytest.mark.parametrize("x,match", [
    (torch.rand(1, 4, 64, 64), "3 input channels, got 4"),
    (torch.rand(1, 3, 64, 70), "multiples of 32, got 64x70"),
    (torch.rand(3, 64, 64), r"\(B, 3, H, W\)"),
])
def test_bad_input_errors(x, match):
    with pytest.raises(ValueError, match=match):
        yolov10.YOLOv10("yolov10n")(x)


def test_unknown_scale():
    with pytest.raises(ValueError, match="unknown YOLOv10 model 'yolov10q'"):
        yolov10.YOLOv10("yolov10q")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        yolov10.YOLOv10("missing.yaml")
