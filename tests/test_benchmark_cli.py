"""`yolov10 benchmark`: every requested row is timed and written as JSON and markdown."""
import json

import pytest

from yolov10.benchmark import benchmark, time_call
from yolov10.cli import main


def test_benchmark_rows_and_files(tmp_path, capsys):
    rows = "eager NCHW,eager channels_last,accelerate,onnxruntime"
    assert main(["benchmark", "--model", "yolov10n", "--imgsz", "64", "--rows", rows, "--iters", "3",
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "yolov10n-64-b1-cpu.json").read_text())
    assert [r["name"] for r in result["rows"]] == rows.split(",")
    for r in result["rows"]:
        assert 0 < r["p20"] <= r["ms"] <= r["p80"] and r["images_per_s"] > 0
    table = (tmp_path / "yolov10n-64-b1-cpu.md").read_text()
    assert "| onnxruntime |" in table or "| **onnxruntime** |" in table
    assert "detections equal to PyTorch's" in capsys.readouterr().out  # the ONNX row is a checked export


def test_time_call_quantiles():
    calls = []
    med, p20, p80 = time_call(lambda: calls.append(1), warmup=2, iters=11)
    assert len(calls) == 13 and 0 <= p20 <= med <= p80


def test_benchmark_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark rows"):
        benchmark("yolov10n", rows=["eager NCHW", "tensorrt"], out=tmp_path)
    with pytest.raises(ValueError, match="exactly one of"):
        benchmark(None, None, out=tmp_path)
    with pytest.raises(ValueError, match="multiple of 32"):
        benchmark("yolov10n", imgsz=50, out=tmp_path)
