"""`yolov10 predict` through PyTorch and through ONNX Runtime: one letterbox / scaling / drawing path."""
import json

import cv2
import numpy as np
import pytest
import torch

import yolov10
from helpers import randomize_bn
from yolov10.cli import main
from yolov10.export import export


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = randomize_bn(yolov10.YOLOv10("yolov10n", nc=3))
    with torch.no_grad():
        for seq in model.head.one2one_cv3:  # scores spread over (0, 1) so that conf 0.5 keeps some
            seq[-1].weight.mul_(40)
            seq[-1].bias.zero_()
    model.names = {0: "a", 1: "b", 2: "c"}
    yolov10.save_checkpoint(d / "w.pt", model, args={"imgsz": 96})
    onnx_path = export(d / "w.pt", "onnx", out=d / "w.onnx")
    src = d / "images"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("wide.png", (90, 170, 3)), ("tall.jpg", (130, 70, 3))):
        cv2.imwrite(str(src / name), rng.integers(0, 255, shape, dtype=np.uint8))
    return d, onnx_path, src


def _run(weights, src, out, *extra):
    assert main(["predict", "--weights", str(weights), "--source", str(src), "--out", str(out), *extra]) == 0
    return json.loads((out / "detections.json").read_text())


def test_onnx_predict_equals_pytorch(setup, tmp_path):
    d, onnx_path, src = setup
    ref = _run(d / "w.pt", src, tmp_path / "pt", "--conf", "0")  # imgsz 96 from the checkpoint
    got = _run(onnx_path, src, tmp_path / "ort", "--conf", "0")
    for r, g in zip(ref, got):
        assert r["image"] == g["image"] and len(r["detections"]) == len(g["detections"]) == 189
        ra = np.array([[*x["box_xyxy"], x["score"], x["class"]] for x in r["detections"]])
        ga = np.array([[*x["box_xyxy"], x["score"], x["class"]] for x in g["detections"]])
        np.testing.assert_allclose(np.sort(ga[:, 4]), np.sort(ra[:, 4]), atol=1e-4)
        top = ra[:, 4] > ra[20, 4] + 1e-4  # the clearly ranked head of the list: same boxes and classes
        for row in ga[top]:
            assert (np.abs(ra - row)[:, [0, 1, 2, 3, 5]].max(1) < 0.2).any()
        img = cv2.imread(str(tmp_path / "ort" / r["image"].split("/")[-1]))
        assert img.shape[:2] == (r["height"], r["width"])


def test_corrupt_image_among_good_ones(setup, tmp_path, capsys):
    d, onnx_path, src = setup
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in src.iterdir():
        (mixed / f.name).write_bytes(f.read_bytes())
    (mixed / "broken.png").write_bytes(b"\x89PNG not really")
    assert main(["predict", "--weights", str(onnx_path), "--source", str(mixed), "--out", str(tmp_path / "o"),
                 "--conf", "0.5"]) == 1
    assert "cannot read image" in capsys.readouterr().err
    results = json.loads((tmp_path / "o" / "detections.json").read_text())
    assert [r["image"].split("/")[-1] for r in results] == ["broken.png", "tall.jpg", "wide.png"]
    assert "broken.png" in results[0]["error"] and all("detections" in r for r in results[1:])
    assert (tmp_path / "o" / "tall.jpg").is_file() and not (tmp_path / "o" / "broken.png").exists()


def test_onnx_errors(setup, tmp_path):
    d, onnx_path, src = setup
    with pytest.raises(ValueError, match="exported at imgsz 96"):
        main(["predict", "--weights", str(onnx_path), "--source", str(src), "--imgsz", "128"])
    (tmp_path / "x.onnx").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="x.onnx is not a loadable ONNX model"):
        main(["predict", "--weights", str(tmp_path / "x.onnx"), "--source", str(src)])
