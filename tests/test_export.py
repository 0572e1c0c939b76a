"""`yolov10 export`: the exported graph (NMS-free top-k inside) reproduces PyTorch's detections."""
import onnx
import pytest
import torch

import yolov10
from helpers import randomize_bn
from yolov10.cli import main
from yolov10.export import detection_mismatches, check_export, export
from yolov10.onnx_runtime import OnnxRunner


def _sharp_model(nc=5, seed=0):
    """BN statistics and a one-to-one class layer that make scores spread over (0, 1) and depend on the
    image, so that the comparison is not decided by ties of near-constant initial scores."""
    torch.manual_seed(seed)
    model = randomize_bn(yolov10.YOLOv10("yolov10n", nc=nc), seed)
    with torch.no_grad():
        for seq in model.head.one2one_cv3:
            seq[-1].weight.mul_(40)
            seq[-1].bias.zero_()
    model.names = {i: f"c{i}" for i in range(nc)}
    return model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "w.pt"
    yolov10.save_checkpoint(path, _sharp_model(), args={"imgsz": 96})
    return path


def test_onnx_dynamic_export_matches_pytorch(ckpt, tmp_path, capsys):
    out = export(ckpt, "onnx", dynamic=True, out=tmp_path / "m.onnx")  # imgsz from the checkpoint: 96
    assert "detections equal to PyTorch's at batch 1, 3" in capsys.readouterr().out
    proto = onnx.load(str(out))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    runner = OnnxRunner(out)
    assert runner.imgsz == 96 and runner.names == {i: f"c{i}" for i in range(5)} and runner.batch is None
    model = yolov10.load_checkpoint(ckpt).fuse().eval()
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x)
    got = runner(x.numpy())
    assert got.shape == (2, 189, 6)  # 96 px: 144 + 36 + 9 anchors < 300
    # a quarter of neighbouring scores differ by more than the tolerance: the check is not all ties
    assert ((ref[..., 4].diff(dim=-1).abs() > 1e-4).float().mean() > 0.2)
    assert detection_mismatches(got, ref, 96) == []


def test_mismatches_are_reported_and_ties_are_not():
    g = torch.Generator().manual_seed(0)
    ref = torch.cat([torch.rand(1, 10, 4, generator=g) * 64, torch.linspace(0.9, 0.1, 10).view(1, 10, 1),
                     torch.zeros(1, 10, 1)], -1)
    tied = ref.clone()
    tied[0, 3, 4] = tied[0, 4, 4] = 0.6
    swapped = tied[:, [0, 1, 2, 4, 3, 5, 6, 7, 8, 9]]
    assert detection_mismatches(swapped, tied, 64) == []  # equal scores: order is free
    assert detection_mismatches(swapped, ref, 64)  # unequal scores: rank order is part of the output
    moved = ref.clone()
    moved[0, 2, 0] += 1.0  # one box 1 px off at 64 px (tolerance 0.064)
    assert "no equal" in detection_mismatches(moved, ref, 64)[0]
    relabeled = ref.clone()
    relabeled[0, 5, 5] = 1
    assert detection_mismatches(relabeled, ref, 64)
    assert "shape" in detection_mismatches(ref[:, :5], ref, 64)[0]


def test_check_catches_a_wrong_export(ckpt, tmp_path):
    out = export(ckpt, "onnx", imgsz=64, out=tmp_path / "m.onnx", check=False)
    other = _sharp_model(seed=1).fuse().eval()
    with pytest.raises(RuntimeError, match="does not reproduce PyTorch at batch 1"):
        check_export(out, "onnx", other, 64, (1,))


@pytest.mark.parametrize("fmt,dynamic", [("torchscript", True), ("pt2", True), ("torchscript", False)])
def test_torchscript_and_pt2(ckpt, tmp_path, capsys, fmt, dynamic):
    out = export(ckpt, fmt, imgsz=64, dynamic=dynamic, out=tmp_path / f"m.{fmt}")
    batches = "1, 3" if dynamic else "1"
    assert f"detections equal to PyTorch's at batch {batches}" in capsys.readouterr().out
    assert out.is_file()


def test_bad_input(ckpt, tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        main(["export", "--weights", str(ckpt), "--format", "tflite"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt is not a YOLOv10 checkpoint"):
        main(["export", "--weights", str(tmp_path / "junk.pt")])
    with pytest.raises(ValueError, match="multiple of 32"):
        export(ckpt, "onnx", imgsz=100)
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="junk.onnx is not a loadable ONNX model"):
        OnnxRunner(tmp_path / "junk.onnx")
    torch.onnx.export(torch.nn.Conv2d(3, 6, 1), (torch.rand(1, 3, 8, 8),), str(tmp_path / "conv.onnx"), dynamo=False)
    with pytest.raises(ValueError, match="conv.onnx is not a YOLOv10 export"):
        OnnxRunner(tmp_path / "conv.onnx")


def test_checkpoint_imgsz(ckpt, tmp_path):
    from yolov10.checkpoint import checkpoint_imgsz
    assert checkpoint_imgsz(ckpt) == 96
    assert checkpoint_imgsz({"train_args": {"imgsz": [320, 320]}}) == 320  # official checkpoints
    yolov10.save_checkpoint(tmp_path / "plain.pt", yolov10.YOLOv10("yolov10n", nc=1))
    assert checkpoint_imgsz(tmp_path / "plain.pt") == 640 and checkpoint_imgsz({}, default=256) == 256
