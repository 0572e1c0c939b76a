"""`yolov10 benchmark`: every requested row is timed round-robin, written as JSON and markdown, and with a
checkpoint and data scored through the row itself."""
import json

import pytest
import torch

from yolov10 import YOLOv10
from yolov10.benchmark import BEST, PAD, StaticBatches, benchmark, time_rows
from yolov10.checkpoint import save_checkpoint
from yolov10.cli import main


def test_benchmark_rows_and_files(tmp_path, capsys):
    rows = "eager NCHW,eager channels_last,accelerate,onnxruntime"
    assert main(["benchmark", "--model", "yolov10n", "--imgsz", "64", "--rows", rows, "--iters", "3",
                 "--warmup", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "yolov10n-64-b1-cpu.json").read_text())
    assert [r["name"] for r in result["rows"]] == rows.split(",")
    assert result["iters"] == 3 and result["loadavg_start"] >= 0 and result["loadavg_end"] >= 0
    for r in result["rows"]:
        assert 0 < r["p20"] <= r["ms"] <= r["p80"] and r["images_per_s"] > 0 and r["setup_s"] > 0
        assert "map50_95" not in r  # no checkpoint and data
    table = (tmp_path / "yolov10n-64-b1-cpu.md").read_text()
    assert "| onnxruntime |" in table or "| **onnxruntime** |" in table
    assert "mAP50-95" not in table and "3 rounds round-robin" in table
    assert "detections equal to PyTorch's" in capsys.readouterr().out  # the ONNX row is a checked export


def test_benchmark_map_per_row(tmp_path):
    """The best CPU path (compiled) and the ONNX export score the same mAP as eager: the deployed forms keep
    the accuracy."""
    from yolov10.data.synth import CLASSES, make_synthetic_dataset
    data = make_synthetic_dataset(tmp_path / "syn", n_train=1, n_val=3, imgsz=64, seed=1)
    torch.manual_seed(0)
    weights = save_checkpoint(tmp_path / "tiny.pt", YOLOv10("yolov10n", nc=len(CLASSES)))
    rows = ["eager NCHW", "onnxruntime", BEST]
    result = benchmark(weights=str(weights), imgsz=64, data=str(data), rows=rows, warmup=2, iters=2,
                       out=tmp_path / "out")
    maps = {r["name"]: r["map50_95"] for r in result["rows"]}
    assert list(maps) == rows and all(0 <= m <= 1 for m in maps.values())
    assert maps[BEST] == pytest.approx(maps["eager NCHW"], abs=1e-3)
    assert maps["onnxruntime"] == pytest.approx(maps["eager NCHW"], abs=1e-3)
    assert "| mAP50-95 |" in (tmp_path / "out" / "tiny-64-b1-cpu.md").read_text()


def test_static_batches_runs_fixed_groups():
    """The validator's batches run `batch` images at a time, the last group filled; the fill is dropped."""
    model = YOLOv10("yolov10n", nc=3).fuse().eval()
    seen = []

    def runner(x):
        seen.append(tuple(x.shape))
        return model(x)
    img = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        out = StaticBatches(runner, 64, 2)(img.contiguous(memory_format=torch.channels_last))
        ref = torch.cat([model(img[:2]), model(torch.cat([img[2:], torch.full_like(img[:1], PAD)]))[:1]])
    assert seen == [(2, 3, 64, 64), (2, 3, 64, 64)] and out.shape == (3, 84, 6)  # 84 anchors at 64 px
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="take 64x64 images"):
        StaticBatches(runner, 64, 1)(torch.rand(1, 3, 64, 96))


def test_time_rows_round_robin():
    calls = []
    stats = time_rows({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=2, iters=4)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 4  # warm-up per row, then one call of each per round
    for med, p20, p80 in stats.values():
        assert 0 <= p20 <= med <= p80


def test_benchmark_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark rows"):
        benchmark("yolov10n", rows=["eager NCHW", "tensorrt"], out=tmp_path)
    with pytest.raises(ValueError, match="exactly one of"):
        benchmark(None, None, out=tmp_path)
    with pytest.raises(ValueError, match="multiple of 32"):
        benchmark("yolov10n", imgsz=50, out=tmp_path)
    with pytest.raises(ValueError, match="--iters must be >= 1"):
        benchmark("yolov10n", imgsz=64, iters=0, out=tmp_path)
