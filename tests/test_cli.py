"""The `yolov10` command line and the predictor."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import yolov10
from yolov10.cli import main
from yolov10.predict import detect


def test_info(capsys):
    assert main(["info", "--model", "yolov10s", "--fused"]) == 0
    out = capsys.readouterr().out
    assert "8,128,272 parameters" in out and "7,248,960 parameters" in out and "21.6 GFLOPs" in out


def test_python_dash_m_help():
    out = subprocess.run([sys.executable, "-m", "yolov10", "--help"], capture_output=True, text=True, check=True)
    assert all(cmd in out.stdout for cmd in ("info", "predict", "train", "val", "data"))


@pytest.mark.parametrize("cmd, flags", [
    ("train", ("--model", "--data", "--kernels", "--resume", "--exist-ok", "--close-mosaic", "--max-nan",
               "--no-augment", "--no-shuffle", "--max-steps", "--hsv-h", "--warmup-bias-lr")),
    ("val", ("--weights", "--data", "--split", "--conf", "--threads")),
    ("data", ("synth",)),
])
def test_command_help_lists_its_flags(cmd, flags, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"yolov10 {cmd}" in out and [f for f in flags if f not in out] == []


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


class _FixedBoxModel(torch.nn.Module):
    """Stands in for a detector: one box at fixed network-pixel coordinates."""

    def __init__(self, box):
        super().__init__()
        self.box = torch.nn.Parameter(torch.tensor([[[*box, 0.9, 2.0]]]), requires_grad=False)

    def forward(self, x):
        assert x.shape[-2:] == (64, 64) and 0 <= x.min() and x.max() <= 1
        return self.box.expand(x.shape[0], 1, 6)


def test_detections_are_mapped_back_to_original_pixels():
    img = np.full((100, 200, 3), 50, np.uint8)  # h=100, w=200 -> scaled by 0.32 to 64x32, padded 16 top/bottom
    dets = detect(_FixedBoxModel([0.0, 16.0, 64.0, 48.0]), img, imgsz=64)
    np.testing.assert_allclose(dets[0, :4], [0, 0, 200, 100], atol=1e-4)
    dets = detect(_FixedBoxModel([16.0, 24.0, 32.0, 40.0]), img, imgsz=64)
    np.testing.assert_allclose(dets[0, :4], [50, 25, 100, 75], atol=1e-4)
    # a 3 x 1000 strip: 64 x 1 after resizing, so the two axes' gains differ five-fold (0.064 vs 1/3)
    dets = detect(_FixedBoxModel([16.0, 31.0, 48.0, 32.0]), np.full((3, 1000, 3), 50, np.uint8), imgsz=64)
    np.testing.assert_allclose(dets[0, :4], [250, 0, 750, 3], atol=1e-3)


def test_predict_writes_annotated_images_and_json(tmp_path):
    model = yolov10.YOLOv10("yolov10n", nc=3)
    model.names = {0: "a", 1: "b", 2: "c"}
    yolov10.save_checkpoint(tmp_path / "w.pt", model)
    src = tmp_path / "images"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("wide.png", (90, 170, 3)), ("tall.jpg", (130, 70, 3))):
        cv2.imwrite(str(src / name), rng.integers(0, 255, shape, dtype=np.uint8))
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(tmp_path / "w.pt"), "--source", str(src), "--out", str(out),
                 "--imgsz", "96", "--conf", "0"]) == 0
    results = json.loads((out / "detections.json").read_text())
    assert [r["image"].split("/")[-1] for r in results] == ["tall.jpg", "wide.png"]
    for r in results:
        assert len(r["detections"]) == 189  # a 96x96 input has 144 + 36 + 9 anchors; conf 0 keeps them all
        boxes = np.array([d["box_xyxy"] for d in r["detections"]])
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= r["width"]).all() and (boxes[:, [1, 3]] <= r["height"]).all()
        assert cv2.imread(str(out / r["image"].split("/")[-1])).shape[:2] == (r["height"], r["width"])


def test_predict_errors(tmp_path):
    yolov10.save_checkpoint(tmp_path / "w.pt", yolov10.YOLOv10("yolov10n", nc=1))
    with pytest.raises(FileNotFoundError, match="nope"):
        main(["predict", "--weights", str(tmp_path / "w.pt"), "--source", str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        main(["predict", "--weights", str(tmp_path / "w.pt"), "--source", str(tmp_path / "empty")])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image .*bad.png"):
        main(["predict", "--weights", str(tmp_path / "w.pt"), "--source", str(tmp_path / "bad.png")])
    with pytest.raises(ValueError, match="multiple of 32"):
        main(["predict", "--weights", str(tmp_path / "w.pt"), "--source", str(tmp_path / "bad.png"), "--imgsz", "100"])


def test_console_entry_reports_bad_input_in_one_line(tmp_path):
    """`yolov10 ...` (the console script runs cli.run) names the problem without a traceback, exit code 2."""
    r = subprocess.run([sys.executable, "-m", "yolov10", "predict", "--weights", str(tmp_path / "w.pt"),
                        "--source", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "nope" in r.stderr and r.stderr.startswith("yolov10: error:"), r.stderr
