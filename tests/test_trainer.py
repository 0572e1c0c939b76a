"""Trainer: a smoke run writes weights/results/plot, --resume continues exactly, checkpoints are atomic,
non-finite losses are skipped (and stop training when they repeat), the optimizer/LR schedule follow the
official formulas, DDP (gloo, 2 processes via torchrun) matches one process, and `--kernels auto` runs."""
import csv
import math
import os
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from yolov10 import YOLOv10, load_checkpoint
from yolov10.cli import main
from yolov10.optim import build_optimizer, lr_lambda
from yolov10.run_state import load_train_state
from yolov10.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from yolov10.data.synth import make_synthetic_dataset
    return str(make_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_train=8, n_val=4, imgsz=64, seed=3))


def _args(data, out, **kw):
    a = dict(data=data, out=str(out), epochs=2, batch=4, imgsz=64, workers=0, kernels="reference", seed=1,
             deterministic=False)
    a.update(kw)
    return a


@pytest.fixture(scope="module")
def full_run(tiny_data, tmp_path_factory):
    """An uninterrupted 2-epoch run (mosaic and the other augmentations on, one loader worker)."""
    out = tmp_path_factory.mktemp("full")
    Trainer(_args(tiny_data, out, workers=1)).train()
    return out


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_smoke_run_writes_weights_results_and_plot(full_run, tiny_data, capsys):
    w = full_run / "weights"
    assert (w / "last.pt").is_file() and (w / "best.pt").is_file()
    assert (full_run / "results.png").stat().st_size > 10_000
    assert (full_run / "predictions.json").is_file() and (full_run / "args.yaml").is_file()
    rows = _read_csv(full_run / "results.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "train/box_om", "train/cls_om", "train/dfl_om", "train/box_oo", "train/cls_oo",
                             "train/dfl_oo", "metrics/mAP50", "metrics/mAP50-95", "lr/pg0", "lr/pg1", "lr/pg2", "time"]
    for r in rows:
        assert all(math.isfinite(float(r[k])) for k in r)
        assert 0.0 <= float(r["metrics/mAP50-95"]) <= float(r["metrics/mAP50"]) <= 1.0
    ck = load_train_state(w / "last.pt")
    assert ck["epoch"] == 1 and ck["format"] == "yolov10-kernels" and ck["ema_updates"] > 0
    assert set(ck) >= {"model", "ema", "optimizer", "epoch", "args", "best_fitness", "results"}
    model = load_checkpoint(w / "best.pt")  # the package's loader reads the EMA weights and class names
    assert model.nc == 8 and model.names[0] == "circle"
    # the frozen DFL projection never moved
    assert torch.equal(ck["model"]["model.23.dfl.conv.weight"].view(-1), torch.arange(16, dtype=torch.float32))
    # standalone validation of the checkpoint
    assert main(["val", "--weights", str(w / "best.pt"), "--data", tiny_data, "--batch", "4", "--workers", "0",
                    "--out", str(full_run / "val")]) == 0
    out = capsys.readouterr().out
    assert "mAP50-95" in out and (full_run / "val" / "predictions.json").is_file()


def test_schedule_and_weight_decay_follow_the_official_formulas(full_run):
    """results.csv's lrs are the official warmup values: nw = max(round(3 nb), 100) = 100 iterations, ni = last
    batch index; lr(ni) = interp(ni, [0, nw], [0 (bias: warmup_bias_lr = 0 under optimizer auto), lr0 lf(epoch)])."""
    rows = _read_csv(full_run / "results.csv")
    nc, nb, epochs = 8, 2, 2
    lr0 = round(0.002 * 5 / (4 + nc), 6)  # optimizer auto with few iterations -> AdamW
    lf = lambda e: (1 - e / epochs) * (1 - 0.01) + 0.01
    for e, r in enumerate(rows):
        ni = nb * e + nb - 1
        want = np.interp(ni, [0, 100], [0.0, lr0 * lf(e)])
        for g in ("lr/pg0", "lr/pg1", "lr/pg2"):
            assert float(r[g]) == pytest.approx(want, rel=1e-5)
    opt = load_train_state(full_run / "weights" / "last.pt")["optimizer"]
    # batch 4 accumulates to the nominal 64: weight_decay 5e-4 * 4 * 16 / 64
    assert [g["weight_decay"] for g in opt["param_groups"]] == [0.0, pytest.approx(5e-4), 0.0]
    assert all(g["betas"] == (0.9, 0.999) for g in opt["param_groups"])


def test_optimizer_groups_match_ultralytics_build_optimizer():
    import oracle
    BaseTrainer = oracle.module("ultralytics.engine.trainer").BaseTrainer
    model = YOLOv10("yolov10n", nc=5)
    for iterations in (500, 20000):
        for name in ("auto", "SGD", "AdamW"):
            ours_args = {"warmup_bias_lr": 0.1}
            ours, _, _, _ = build_optimizer(model, name, 0.01, 0.937, 1e-3, iterations, nc=5, args=ours_args)
            fake = types.SimpleNamespace(args=types.SimpleNamespace(lr0=0.01, momentum=0.937, warmup_bias_lr=0.1),
                                         data={"nc": 5})
            ref = BaseTrainer.build_optimizer(fake, model, name, 0.01, 0.937, 1e-3, iterations)
            assert type(ours) is type(ref)
            assert ours_args["warmup_bias_lr"] == fake.args.warmup_bias_lr
            assert len(ours.param_groups) == len(ref.param_groups) == 3
            for go, gr in zip(ours.param_groups, ref.param_groups):
                assert [id(p) for p in go["params"]] == [id(p) for p in gr["params"]]
                for k in ("lr", "weight_decay", "momentum", "betas", "nesterov"):
                    assert go.get(k) == gr.get(k)
    opt, name, lr, mom = build_optimizer(model, "auto", iterations=20000, nc=5)
    assert (name, lr, mom) == ("SGD", 0.01, 0.9) and opt.param_groups[0]["nesterov"]
    opt, name, lr, _ = build_optimizer(model, "auto", iterations=100, nc=5)
    assert (name, lr) == ("AdamW", round(0.01 / 9, 6))
    # pg0 = biases, pg1 = decayed weights, pg2 = norm-layer weights
    bn_w = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in opt.param_groups[2]["params"]} == bn_w
    f = lr_lambda(100, 0.01)
    assert f(0) == 1.0 and f(50) == pytest.approx(0.505) and f(100) == pytest.approx(0.01)


def test_resume_continues_exactly(full_run, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "resumed"

    class Killed(Exception):
        pass

    real_save = Trainer.save

    def save_then_die(self, epoch, is_best):
        real_save(self, epoch, is_best)
        self.write_results()
        raise Killed  # the process dies right after epoch 1's checkpoint

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(Killed):
        Trainer(_args(tiny_data, out, workers=1)).train()
    monkeypatch.setattr(Trainer, "save", real_save)
    assert len(_read_csv(out / "results.csv")) == 1
    assert main(["train", "--resume", str(out / "weights" / "last.pt")]) == 0

    a, b = load_train_state(full_run / "weights" / "last.pt"), load_train_state(out / "weights" / "last.pt")
    assert b["epoch"] == 1 and b["ema_updates"] == a["ema_updates"]
    for r_a, r_b in zip(a["results"], b["results"]):
        np.testing.assert_allclose(r_b["losses"], r_a["losses"], rtol=0, atol=1e-6)
        assert r_b["map50_95"] == pytest.approx(r_a["map50_95"], abs=1e-6)
    for key in ("model", "ema"):
        for k, v in a[key].items():
            torch.testing.assert_close(b[key][k], v, rtol=0, atol=1e-6, msg=f"{key}.{k} differs after resume")
    # the resumed run completed; resuming again is a clear error
    with pytest.raises(RuntimeError, match="finished all 2 epochs"):
        main(["train", "--resume", str(out)])


def test_checkpoint_write_is_atomic(full_run, tmp_path, monkeypatch):
    """A crash in the middle of writing last.pt leaves the previous last.pt intact and no temp file behind."""
    from yolov10 import checkpoint
    w = tmp_path / "weights"
    shutil.copytree(full_run / "weights", w)
    before = (w / "last.pt").read_bytes()

    def dying_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(w / "last.pt", YOLOv10("yolov10n", nc=8), epoch=5)
    assert (w / "last.pt").read_bytes() == before
    assert sorted(p.name for p in w.iterdir()) == ["best.pt", "last.pt"]
    load_train_state(w / "last.pt")


def test_non_finite_loss_is_skipped_then_stops_when_repeated(tiny_data, tmp_path, monkeypatch):
    real = Trainer.compute_loss
    calls = {"n": 0}

    def sometimes_nan(self, batch):
        calls["n"] += 1
        loss, items = real(self, batch)
        return (loss * float("nan"), items) if calls["n"] == 2 else (loss, items)

    monkeypatch.setattr(Trainer, "compute_loss", sometimes_nan)
    with pytest.warns(RuntimeWarning, match="non-finite loss at epoch 1 batch 2: step skipped"):
        Trainer(_args(tiny_data, tmp_path / "one", epochs=1, batch=2, val=False)).train()
    row = _read_csv(tmp_path / "one" / "results.csv")[0]
    assert all(math.isfinite(float(row[f"train/{n}"])) for n in ("box_om", "cls_om", "dfl_oo"))

    def always_inf(self, batch):
        loss, items = real(self, batch)
        return loss * float("inf"), items

    monkeypatch.setattr(Trainer, "compute_loss", always_inf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="NaN/Inf for 3 batches in a row"):
            Trainer(_args(tiny_data, tmp_path / "two", epochs=1, batch=2, val=False, max_nan=3)).train()


def test_kernels_auto_runs(tiny_data, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fused op that is not there warns once and keeps the reference
        Trainer(_args(tiny_data, tmp_path, epochs=1, kernels="auto", val=False, max_steps=1)).train()
    out = capsys.readouterr().out
    assert "kernels (auto): accelerate(backend='auto')" in out and "Assigner" in out
    assert (tmp_path / "weights" / "last.pt").is_file()


def test_kernels_seam_without_the_kernels_package(monkeypatch):
    """--kernels auto falls back to the reference with one warning; triton is an error that says how to install."""
    from yolov10 import kernel_seam as kernels
    monkeypatch.setitem(sys.modules, "yolov10_kernels", None)  # `import yolov10_kernels` now raises ImportError
    monkeypatch.setattr(kernels, "_warned", False)
    model = torch.nn.Linear(2, 2)
    with pytest.warns(RuntimeWarning, match="yolov10_kernels.accelerate cannot be imported.*falls back to the ref"):
        assert kernels.accelerate(model, "auto") is model
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second use stays quiet
        assert kernels.assigner_factory("auto") == (None, "reference TaskAlignedAssigner (fused one unavailable)")
    with pytest.raises(RuntimeError, match="--kernels triton needs the fused kernels.*pip install"):
        kernels.assigner_factory("triton")
    with pytest.raises(RuntimeError, match="yolov10_kernels.accelerate cannot be imported"):
        kernels.accelerate(model, "triton")
    with pytest.raises(ValueError, match="kernels must be one of auto, reference, triton, got 'cuda'"):
        kernels.accelerate(model, "cuda")


def test_kernels_seam_with_the_kernels_package():
    from yolov10 import kernel_seam as kernels
    from yolov10_kernels import FusedTaskAlignedAssigner
    for choice in ("auto", "triton"):
        factory, desc = kernels.assigner_factory(choice)
        assert factory.func is FusedTaskAlignedAssigner and factory.keywords == {"backend": choice}
        assert desc == f"FusedTaskAlignedAssigner(backend={choice!r})"
    assert kernels.assigner_factory("reference") == (None, "reference TaskAlignedAssigner")
    model = YOLOv10("yolov10n", nc=2)
    assert kernels.accelerate(model, "reference") is model and kernels.fused_modules(model) == {}
    fused = kernels.fused_modules(kernels.accelerate(model, "auto"))
    assert fused["cib"] > 0 and fused["scdown"] > 0, fused


def _paired_dataset(tiny_data, root):
    """8 training images ordered A A B B C C D D: with no shuffling, the one-process batch [A A B B] and the two
    DDP shards [A B] / [A B] have identical BatchNorm batch statistics. The boxes are large, so that even an
    untrained model overlaps them enough for the loss normaliser (sum of soft targets, floored at 1 by the
    official loss) to exceed 1 on one shard: below that floor per-process and global normalisation differ."""
    src = Path(tiny_data).parent
    big = ["0.50 0.50 0.95 0.90", "0.45 0.55 0.80 0.85", "0.55 0.45 0.85 0.70", "0.40 0.40 0.75 0.75",
           "0.60 0.60 0.70 0.75", "0.50 0.45 0.90 0.60"]
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    ims = sorted((src / "images" / "train").iterdir())
    for k in range(8):
        im = ims[k // 2]
        shutil.copy(im, root / "images" / "train" / f"{k:02d}{im.suffix}")
        rows = [f"{(k // 2 + j) % 8} {b}" for j, b in enumerate(big)]
        (root / "labels" / "train" / f"{k:02d}.txt").write_text("\n".join(rows) + "\n")
    names = (src / "data.yaml").read_text().split("names:", 1)[1]
    (root / "data.yaml").write_text(f"train: images/train\nval: images/train\nnames:{names}")
    return root / "data.yaml"


def test_ddp_two_processes_match_one_process(tiny_data, tmp_path, monkeypatch):
    """torchrun --nproc_per_node 2 (gloo on CPU) with global batch 4 gives the same weights as one process with
    batch 4 after 2 SGD steps (no augmentation, fixed order; BN buffers differ by the unbiased-variance factor of
    the smaller per-process batch, so only parameters are compared). Longer runs drift apart at the 1e-3 level:
    last-bit differences (BatchNorm over 4 vs 2 images) flip near-ties in the assigner's top-k."""
    data = _paired_dataset(tiny_data, tmp_path / "pairs")
    common = ["--data", str(data), "--epochs", "1", "--batch", "4", "--imgsz", "128", "--workers", "0", "--kernels",
              "reference", "--optimizer", "SGD", "--lr0", "0.02", "--warmup-epochs", "0", "--nbs", "4", "--val",
              "false", "--no-augment", "--no-shuffle", "--deterministic", "false",
              "--amp", "false"]  # fp32: bf16 autocast on the CPU would hide the DDP arithmetic under its rounding
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "yolov10", "train", *common, "--out", str(tmp_path / "ddp")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "DDP world size 2" in r.stdout
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # DDP trains NCHW; one CPU process would be channels_last, whose last-bit differences flip assigner ties
    monkeypatch.setattr("yolov10.trainer.memory_format", lambda device: torch.contiguous_format)
    try:
        assert main(["train", *common, "--out", str(tmp_path / "single")]) == 0
    finally:
        torch.set_num_threads(n_threads)
    a = load_train_state(tmp_path / "single" / "weights" / "last.pt")
    b = load_train_state(tmp_path / "ddp" / "weights" / "last.pt")
    assert a["last_opt_step"] == b["last_opt_step"] == 1  # 2 batches, an optimizer step after each
    torch.manual_seed(0)  # the trainer seeds with --seed (0) right before building the model
    start = YOLOv10("yolov10n", nc=8).state_dict()
    moved = 0
    for k, p in YOLOv10("yolov10n", nc=8).named_parameters():
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-5, msg=f"{k} differs")
        moved += int(not torch.equal(a["model"][k], start[k]))
    assert moved > 100  # the runs really trained
    for r_a, r_b in zip(a["results"], b["results"]):  # rank 0's shard has the same per-box loss means
        np.testing.assert_allclose(r_b["losses"], r_a["losses"], rtol=1e-4)


def test_cpu_training_and_validation_run_channels_last_and_checkpoints_stay_nchw(tiny_data, tmp_path):
    """On the CPU the model and its input batches are channels_last in training and in validation (of the
    EMA); the checkpoint holds the standard contiguous tensors, and a plain NCHW model loaded from it gives the
    outputs of the channels_last EMA it was written from."""
    cl = torch.channels_last
    t = Trainer(_args(tiny_data, tmp_path, epochs=1, max_steps=1))
    t.setup()
    seen = {}

    def record(name):
        def hook(module, args):
            conv = module.model[0].conv.weight
            seen[name] = (args[0].is_contiguous(memory_format=cl) and not args[0].is_contiguous(),
                          conv.is_contiguous(memory_format=cl) and not conv.is_contiguous())
        return hook

    t.model.register_forward_pre_hook(record("train"))
    t.ema.ema.register_forward_pre_hook(record("val"))
    t.train_epoch(0)
    t.validate()
    assert seen == {"train": (True, True), "val": (True, True)}
    t.save(0, is_best=True)
    ck = load_train_state(t.best)
    for key in ("model", "ema"):
        assert all(v.is_contiguous() for v in ck[key].values()), key
    ema_sd = t.ema.ema.state_dict()
    assert all(torch.equal(v, ema_sd[k]) for k, v in ck["ema"].items())
    plain = YOLOv10("yolov10n", nc=8)
    plain.load_state_dict(ck["ema"], strict=True)
    assert all(torch.equal(v, ema_sd[k]) for k, v in plain.state_dict().items())
    loaded = load_checkpoint(t.best).eval()
    assert loaded.model[0].conv.weight.is_contiguous()
    feats = {}  # the head's input maps: the detections' top-k order flips on near-tied scores of a 1-step model
    for name, m in (("cl", t.ema.ema), ("plain", plain), ("loaded", loaded)):
        m.eval().model[-1].register_forward_hook(lambda mod, args, out, name=name: feats.update({name: args[0]}))
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        t.ema.ema(x.contiguous(memory_format=cl))
        got_plain, got_loaded = plain(x), loaded(x)
    assert feats["plain"][0].is_contiguous() and feats["cl"][0].is_contiguous(memory_format=cl)
    for f_cl, f_plain in zip(feats["cl"], feats["plain"]):
        torch.testing.assert_close(f_plain, f_cl, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_loaded, got_plain, rtol=0, atol=0)


def test_val_epochs_validates_only_the_last_epochs(tiny_data, tmp_path):
    Trainer(_args(tiny_data, tmp_path, epochs=3, val_epochs=2, max_steps=1)).train()
    maps = [float(r["metrics/mAP50-95"]) for r in _read_csv(tmp_path / "results.csv")]
    assert math.isnan(maps[0]) and all(math.isfinite(m) for m in maps[1:])
    assert load_train_state(tmp_path / "weights" / "best.pt")["epoch"] >= 1  # best.pt is a validated epoch
    from yolov10.defaults import SYNTH_PRESET, resolve_args
    synth, official = resolve_args({}), resolve_args({"data": tiny_data})
    assert synth["val_epochs"] == SYNTH_PRESET["val_epochs"] > 0 and official["val_epochs"] == 0


def test_presets_fill_only_what_the_user_left_unset(tiny_data):
    from yolov10.defaults import OFFICIAL, SYNTH_PRESET, resolve_args
    synth, official = resolve_args({}), resolve_args({"data": tiny_data})
    assert {k: synth[k] for k in SYNTH_PRESET} == SYNTH_PRESET
    assert {k: official[k] for k in OFFICIAL} == OFFICIAL
    assert official["optimizer"] == "auto" and official["lr0"] == 0.01 and official["warmup_epochs"] == 3.0
    assert resolve_args({"lr0": 0.02, "epochs": 2})["lr0"] == 0.02 and resolve_args({"epochs": 2})["epochs"] == 2
