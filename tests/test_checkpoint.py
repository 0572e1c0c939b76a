"""load_checkpoint: official checkpoints (pickled ultralytics objects) without ultralytics, plain
state_dicts, this package's checkpoints, and clear errors for everything else."""
import copy
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

import yolov10
import oracle
from helpers import assert_same_detections, randomize_bn


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A checkpoint written the way the official trainer writes it, and the oracle's eval output."""
    tasks = oracle.module("ultralytics.nn.tasks")
    torch.manual_seed(0)
    model = randomize_bn(tasks.DetectionModel("yolov10n.yaml", nc=5, verbose=False))
    model.names = {i: f"class{i}" for i in range(5)}
    opt = torch.optim.SGD(model.parameters(), lr=1e-7, momentum=0.9)
    model(torch.rand(1, 3, 64, 64))["one2many"][0].sum().backward()
    opt.step()
    ema = copy.deepcopy(model).half()
    path = tmp_path_factory.mktemp("official") / "yolov10n_official.pt"
    torch.save({"date": "2026-11-22", "version": "8.3.253", "epoch": 3, "best_fitness": 0.5, "model": None,
                "ema": ema, "updates": 10, "optimizer": opt.state_dict(),
                "train_args": {"model": "yolov10n.yaml", "imgsz": 640, "save_dir": pathlib.Path("runs/x")},
                "train_metrics": {"metrics/mAP50(B)": 0.1}}, path)
    x = torch.rand(2, 3, 64, 96)
    ref = copy.deepcopy(ema).float().eval()(x)[0]
    assert torch.isfinite(ref).all()
    return path, x, ref


def test_official_checkpoint_loads_without_ultralytics(official, tmp_path):
    path, x, ref = official
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["ultralytics"] = None  # any import of ultralytics now fails
        import torch, yolov10
        model = yolov10.load_checkpoint({str(path)!r}).eval()
        assert model.nc == 5 and model.scale == "n" and model.names[4] == "class4", (model.nc, model.names)
        torch.save(model(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'out.pt')!r})
        assert "ultralytics" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
    """)
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    out = torch.load(tmp_path / "out.pt")
    assert_same_detections(out, ref)


def test_plain_state_dict(tmp_path):
    model = randomize_bn(yolov10.YOLOv10("yolov10s", nc=3))
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    loaded = yolov10.load_checkpoint(tmp_path / "sd.pt")
    assert loaded.scale == "s" and loaded.nc == 3
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_own_checkpoint_roundtrip(tmp_path):
    model = randomize_bn(yolov10.YOLOv10("yolov10n", nc=2))
    model.names = {0: "cat", 1: "dog"}
    yolov10.save_checkpoint(tmp_path / "ours.pt", model, epoch=4)
    loaded = yolov10.load_checkpoint(tmp_path / "ours.pt")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "ours.pt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert loaded.names == {0: "cat", 1: "dog"}
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(model.eval()(x), loaded.eval()(x))


def test_mismatch_says_what_differs(tmp_path):
    yolov10.save_checkpoint(tmp_path / "n.pt", yolov10.YOLOv10("yolov10n", nc=2))
    with pytest.raises(ValueError, match="scale: checkpoint is yolov10n, requested yolov10s"):
        yolov10.load_checkpoint(tmp_path / "n.pt", cfg="yolov10s")
    with pytest.raises(ValueError, match="class count: checkpoint has nc=2, requested nc=80"):
        yolov10.load_checkpoint(tmp_path / "n.pt", nc=80)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt is not a YOLOv10 checkpoint"):
        yolov10.load_checkpoint(tmp_path / "notes.txt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt is not a YOLOv10 checkpoint"):
        yolov10.load_checkpoint(tmp_path / "list.pt")
    torch.save({"model.0.conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not look like a YOLOv10 state_dict"):
        yolov10.load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        yolov10.load_checkpoint(tmp_path / "missing.pt")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch should_not_exist",))


def test_restricted_unpickler_refuses_code(tmp_path):
    torch.save({"model": _Exploit()}, tmp_path / "evil.pt", pickle_module=pickle)
    with pytest.raises(ValueError, match="not allowed to load"):
        yolov10.load_checkpoint(tmp_path / "evil.pt")
    assert not (pathlib.Path.cwd() / "should_not_exist").exists()


def test_checkpoint_without_one2many_head_is_inference_only(tmp_path):
    model = randomize_bn(yolov10.YOLOv10("yolov10n", nc=2)).eval()
    x = torch.rand(1, 3, 64, 64)
    ref = model(x)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith(("model.23.cv2.", "model.23.cv3."))}
    torch.save(sd, tmp_path / "o2o_only.pt")
    loaded = yolov10.load_checkpoint(tmp_path / "o2o_only.pt").eval()
    assert torch.equal(loaded(x), ref)
    with pytest.raises(RuntimeError, match="cannot run in train mode"):
        loaded.train()(x)
    del sd["model.2.cv2.conv.weight"]  # a backbone conv named cv2 is not part of the one-to-many head
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="match none of the YOLOv10 scales"):
        yolov10.load_checkpoint(tmp_path / "broken.pt")
