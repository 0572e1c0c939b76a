"""`yolov10 rank`: numerical rank of each stage's last convolution, on weights of known rank."""
import json

import pytest
import torch

import yolov10
from yolov10.cli import main
from yolov10.rank import cib_order, last_dense_conv, numerical_rank, stage_ranks


def _weight_with_singular_values(shape, s, seed=0):
    """A conv weight whose (C_out, C_in * k * k) matrix has exactly the singular values s (then zeros)."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = shape[0], shape[1] * shape[2] * shape[3]
    u, _ = torch.linalg.qr(torch.randn(rows, rows, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, cols, generator=g, dtype=torch.float64))
    sv = torch.zeros(rows, cols, dtype=torch.float64)
    sv[range(len(s)), range(len(s))] = torch.tensor(s, dtype=torch.float64)
    return (u @ sv @ v.T).reshape(shape).float()


def test_numerical_rank_counts_values_above_half_the_largest():
    w = _weight_with_singular_values((8, 4, 3, 3), [10, 6, 5.1, 4.9, 1])
    assert numerical_rank(w) == 3
    assert numerical_rank(w, threshold=0.05) == 5
    assert numerical_rank(torch.zeros(4, 4, 1, 1)) == 0
    with pytest.raises(ValueError, match="convolution weight"):
        numerical_rank(torch.ones(4))


def test_stage_ranks_on_known_weights(tmp_path):
    model = yolov10.YOLOv10("yolov10n", nc=2)
    stages = [i for i, m in enumerate(model.model) if type(m).__name__ in ("C2f", "C2fCIB")]
    assert stages == [2, 4, 6, 8, 13, 16, 19, 22]
    wanted = {}
    for k, i in enumerate(stages):
        conv = last_dense_conv(model.model[i].m[-1])
        assert conv.groups == 1
        r = k + 2
        wanted[i] = r
        with torch.no_grad():
            conv.weight.copy_(_weight_with_singular_values(conv.weight.shape, [3.0] * r + [1.0], seed=k))
    rows = stage_ranks(model)
    assert [(r["layer"], r["rank"]) for r in rows] == list(wanted.items())
    assert rows[-1]["module"] == "C2fCIB" and rows[-1]["conv"] == "model.22.m.0.cv1.3.conv"  # CIB's last PW conv
    assert [r["stride"] for r in rows] == [4, 8, 16, 32, 16, 8, 16, 32]
    assert all(abs(r["ratio"] - r["rank"] / r["c_out"]) < 1e-12 for r in rows)
    assert [r["layer"] for r in cib_order(rows)] == [i for i, _ in sorted(
        wanted.items(), key=lambda t: (t[1] / rows[stages.index(t[0])]["c_out"], t[0]))]

    yolov10.save_checkpoint(tmp_path / "w.pt", model)
    assert main(["rank", "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "rank.json").read_text())
    assert [s["rank"] for s in report["stages"]] == list(wanted.values())
    assert (tmp_path / "r" / "rank.png").stat().st_size > 1000
    assert "CIB order" in (tmp_path / "r" / "rank.md").read_text()


def test_rank_cli_errors(tmp_path):
    with pytest.raises(SystemExit):
        main(["rank"])  # neither --model nor --weights
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.pt is not a YOLOv10 checkpoint"):
        main(["rank", "--weights", str(tmp_path / "bad.pt")])
