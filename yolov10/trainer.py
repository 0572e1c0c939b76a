"""YOLOv10 trainer: the official (ultralytics / THU-MIG) training mechanics in plain PyTorch.

  yolov10 train [--model yolov10n] [--data data.yaml] [--epochs N] [--batch N] [--imgsz N] [--device cpu|0|0,1]
                [--workers N] [--kernels auto|reference|triton] [--resume [last.pt|DIR]] [--out DIR] ...

Mechanics (spec: shared/research/yolov10_ref.md §4.3):
- optimizer "auto": SGD(lr 0.01, momentum 0.9, nesterov) when the run has > 10000 iterations, else
  AdamW(lr = round(0.002 * 5 / (4 + nc), 6), betas (0.9, 0.999)); "auto" also sets warmup_bias_lr = 0. Three
  parameter groups, in the official order: pg0 biases (no decay), pg1 weights (decay), pg2 norm-layer
  weights (no decay). weight_decay is scaled by batch * accumulate / nbs.
- gradient accumulation to a nominal batch nbs = 64; warmup over max(round(warmup_epochs * nb), 100)
  iterations (lr 0 -> lr0 * lf(epoch), bias lr warmup_bias_lr -> lr0 * lf(epoch), momentum 0.8 -> 0.937,
  accumulate 1 -> nbs / batch); linear LR decay lf(e) = (1 - e / epochs) * (1 - lrf) + lrf per epoch.
- AMP (fp16 autocast + GradScaler) on CUDA, grad-norm clip 10, EMA (0.9999, tau 2000) of all float state;
  validation (COCO mAP with pycocotools, one-to-one head) and checkpoints use the EMA. `.dfl` is frozen.
- seeds: torch/numpy/random are seeded from (seed, epoch, rank) at the start of every epoch, and the sampler
  shuffles with (seed, epoch), so `--resume` after epoch k reproduces an uninterrupted run exactly (CPU).
- DDP: launch with torchrun (`torchrun --nproc_per_node 2 -m yolov10 train ...`); the process group comes
  from the environment (nccl on CUDA, gloo on CPU); DistributedSampler; only rank 0 validates and writes.
  --batch is the global batch (split over the processes); the loss is multiplied by the world size as in
  ultralytics, so DDP gradients equal those of one process with the same global batch. BatchNorm layers keep
  per-process statistics (no SyncBatchNorm, as the official trainer).
- outputs under --out: weights/last.pt and weights/best.pt (written atomically), results.csv (one row per
  epoch), results.png (loss and mAP curves), predictions.json of the last validation, args.yaml.
- a non-finite loss skips that batch with a warning; `max_nan` (5) in a row stops training with an error.

With no --data, the embedded synthetic dataset (yolov10.data.synth) is generated once under
`datasets/synth` (or $YOLOV10_DATASETS/synth) and used, with CPU-friendly defaults (see SYNTH_PRESET).
"""
import argparse
import csv
import functools
import math
import os
import random
import sys
import time
import warnings
from copy import deepcopy
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from .ema import ModelEMA, unwrap
from .validator import Validator, fitness, select_device

__all__ = ["DEFAULTS", "SYNTH_PRESET", "Trainer", "train", "cli", "build_optimizer", "resolve_data"]

# Official default.yaml values (train-relevant subset); None = resolved at setup (see resolve_args).
DEFAULTS = {
    "model": "yolov10n", "data": None, "epochs": None, "batch": None, "imgsz": None, "device": "", "workers": None,
    "kernels": "auto", "out": None, "exist_ok": False, "seed": 0, "deterministic": True, "threads": None,
    "optimizer": "auto", "lr0": 0.01, "lrf": 0.01, "momentum": 0.937, "weight_decay": 5e-4,
    "warmup_epochs": 3.0, "warmup_momentum": 0.8, "warmup_bias_lr": 0.1, "nbs": None, "cos_lr": False,
    "box": 7.5, "cls": 0.5, "dfl": 1.5, "amp": True, "close_mosaic": None, "val": True, "max_nan": 5,
    "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "degrees": 0.0, "translate": 0.1, "scale": 0.5, "shear": 0.0,
    "perspective": 0.0, "flipud": 0.0, "fliplr": 0.5, "mosaic": 1.0, "augment": True, "shuffle": True,
    "max_steps": None,
}
# What None resolves to with a user dataset (the official defaults) ...
OFFICIAL = {"epochs": 100, "batch": 16, "imgsz": 640, "workers": 8, "nbs": 64, "close_mosaic": 10}
# ... and with the embedded synthetic dataset: sized so that `yolov10 train` with no flags finishes within
# 15 minutes on a 2-core CPU and reaches mAP50-95 >= 0.3 on the synthetic validation split.
# Short CPU runs need many optimizer steps: no gradient accumulation (nbs = batch), mosaic closed for the last 4.
SYNTH_PRESET = {"epochs": 10, "batch": 16, "imgsz": 256, "workers": 2, "nbs": 16, "close_mosaic": 4}
SYNTH_DATASET = {"n_train": 1500, "n_val": 200, "imgsz": 256, "seed": 0}

LOSS_NAMES = ("box_om", "cls_om", "dfl_om", "box_oo", "cls_oo", "dfl_oo")
CSV_COLUMNS = ("epoch", *(f"train/{n}" for n in LOSS_NAMES), "metrics/mAP50", "metrics/mAP50-95",
               "lr/pg0", "lr/pg1", "lr/pg2", "time")


# ---------------------------------------------------------------------------------------------------------
# distributed helpers
def dist_env():
    """(rank, local_rank, world_size) from the torchrun environment; (-1, -1, 1) for a single process."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"])), world
    return -1, -1, 1


def is_main(rank):
    return rank in (-1, 0)


def log(msg, rank=-1):
    if is_main(rank):
        print(msg, flush=True)


# ---------------------------------------------------------------------------------------------------------
def seed_everything(seed, deterministic=True):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def epoch_seed(seed, epoch, rank):
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + max(int(rank), 0) * 104_729) % 2**31


def synth_root():
    return Path(os.environ.get("YOLOV10_DATASETS", "datasets")) / "synth"


def resolve_data(data, args=None):
    """data.yaml path (or None = the embedded synthetic dataset, generated on first use) -> data dict with
    'train', 'val', 'names' ({i: name}), 'nc', 'yaml'."""
    from .data import load_data_yaml
    if data in (None, "", "synth"):
        from .data.synth import make_synthetic_dataset
        t0 = time.time()
        data = str(make_synthetic_dataset(synth_root(), **SYNTH_DATASET))  # reused when already there
        if time.time() - t0 > 2:
            print(f"synthetic dataset written to {synth_root()} ({time.time() - t0:.0f} s)", flush=True)
    d = dict(load_data_yaml(data))
    names = d["names"]
    d["names"] = dict(enumerate(names)) if isinstance(names, (list, tuple)) else {int(k): v for k, v in names.items()}
    d["nc"] = int(d.get("nc") or len(d["names"]))
    d["yaml"] = d.get("yaml_file", str(data))  # absolute: checkpoints remember it for `yolov10 val`
    return d


def resolve_args(args):
    """Fill the None defaults: the synthetic preset without --data, the official values otherwise."""
    a = dict(DEFAULTS)
    a.update({k: v for k, v in dict(args).items() if v is not None or k not in a})
    preset = SYNTH_PRESET if a["data"] in (None, "", "synth") else OFFICIAL
    for k, v in preset.items():
        if a.get(k) is None:
            a[k] = v
    return a


# ---------------------------------------------------------------------------------------------------------
def build_optimizer(model, name="auto", lr=0.01, momentum=0.937, decay=1e-5, iterations=1e5, nc=80, args=None):
    """The official build_optimizer. Returns (optimizer, resolved name, lr, momentum); with name 'auto' it sets
    args['warmup_bias_lr'] = 0 (as ultralytics does) when args is given."""
    g = [], [], []  # weights with decay, norm-layer weights, biases
    bn = tuple(v for k, v in nn.__dict__.items() if "Norm" in k)
    known = ("Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp", "SGD", "auto")
    name = {x.lower(): x for x in known}.get(str(name).lower(), name)
    if name == "auto":
        lr_fit = round(0.002 * 5 / (4 + nc), 6)
        name, lr, momentum = ("SGD", 0.01, 0.9) if iterations > 10000 else ("AdamW", lr_fit, 0.9)
        if args is not None:
            args["warmup_bias_lr"] = 0.0
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            fullname = f"{module_name}.{param_name}" if module_name else param_name
            if "bias" in fullname:
                g[2].append(param)
            elif isinstance(module, bn):
                g[1].append(param)
            else:
                g[0].append(param)
    if name in ("Adam", "Adamax", "AdamW", "NAdam", "RAdam"):
        optimizer = getattr(torch.optim, name)(g[2], lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    elif name == "RMSProp":
        optimizer = torch.optim.RMSprop(g[2], lr=lr, momentum=momentum)
    elif name == "SGD":
        optimizer = torch.optim.SGD(g[2], lr=lr, momentum=momentum, nesterov=True)
    else:
        raise ValueError(f"optimizer {name!r} not supported: use auto, SGD, Adam, AdamW, NAdam, RAdam, Adamax or RMSProp")
    optimizer.add_param_group({"params": g[0], "weight_decay": decay})
    optimizer.add_param_group({"params": g[1], "weight_decay": 0.0})
    return optimizer, name, lr, momentum


def lr_lambda(epochs, lrf, cos=False):
    if cos:
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda x: max(1 - x / epochs, 0) * (1.0 - lrf) + lrf


def make_assigner_factory(kernels, rank=-1):
    """(factory or None, description). 'reference' -> the pure-PyTorch assigner; 'auto' -> the fused assigner
    when yolov10_kernels provides it (one warning and the reference otherwise); 'triton' -> fused, required."""
    if kernels == "reference":
        return None, "reference TaskAlignedAssigner"
    try:
        from yolov10_kernels import FusedTaskAlignedAssigner
    except Exception as e:  # ImportError / AttributeError while it is not built or not shipped
        if kernels == "triton":
            raise RuntimeError(f"--kernels triton needs yolov10_kernels.FusedTaskAlignedAssigner: {e}") from e
        if is_main(rank):
            warnings.warn(f"yolov10_kernels.FusedTaskAlignedAssigner is not available ({type(e).__name__}: {e}); "
                          f"the loss uses the reference assigner", RuntimeWarning, stacklevel=2)
        return None, "reference TaskAlignedAssigner (fused one unavailable)"
    backend = "auto" if kernels == "auto" else kernels
    return functools.partial(FusedTaskAlignedAssigner, backend=backend), f"FusedTaskAlignedAssigner(backend={backend!r})"


def _rng_state():
    return {"torch": torch.get_rng_state(), "numpy": [x.tolist() if isinstance(x, np.ndarray) else x
                                                      for x in np.random.get_state()],
            "random": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state):
    if not state:
        return
    torch.set_rng_state(state["torch"])
    s = state["numpy"]
    np.random.set_state((s[0], np.asarray(s[1], dtype=np.uint32), *s[2:]))
    r = state["random"]
    random.setstate((r[0], tuple(r[1]), r[2]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _increment_dir(base):
    base = Path(base)
    if not base.exists():
        return base
    for n in range(2, 10_000):
        p = base.with_name(f"{base.name}{n}")
        if not p.exists():
            return p
    raise RuntimeError(f"too many runs under {base.parent}")


def _find_last(resume):
    """--resume argument -> last.pt path ('' / True = the newest runs/**/last.pt)."""
    if resume in (True, "", "True", "latest"):
        cands = sorted(Path("runs").glob("**/last.pt"), key=lambda p: p.stat().st_mtime)
        if not cands:
            raise FileNotFoundError("--resume: no runs/**/last.pt found; pass the checkpoint path")
        return cands[-1]
    p = Path(resume)
    if p.is_dir():
        p = p / "weights" / "last.pt" if (p / "weights" / "last.pt").is_file() else p / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(f"--resume: {p} does not exist")
    return p


def load_train_state(path):
    """Read a checkpoint written by this trainer (tensors, numbers and strings only)."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or "optimizer" not in ck or "args" not in ck:
        raise ValueError(f"{path} is not a training checkpoint of `yolov10 train` (no optimizer/args to resume)")
    return ck


# ---------------------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, args=None, **overrides):
        args = dict(args or {}, **overrides)
        self.resume_ckpt = None
        if args.get("resume"):
            path = _find_last(args["resume"])
            ck = load_train_state(path)
            keep = {k: args[k] for k in ("device", "workers", "threads") if args.get(k) is not None}
            args = {**DEFAULTS, **ck["args"], **keep}
            args["resume"] = str(path)
            if ck["epoch"] + 1 >= args["epochs"]:
                raise RuntimeError(f"{path} finished all {args['epochs']} epochs already; nothing to resume "
                                   f"(start a new run instead)")
            self.resume_ckpt = ck
        self.args = resolve_args(args)
        self.rank, self.local_rank, self.world_size = dist_env()
        self.nan_streak = 0
        self.history = []
        self.best_fitness = None
        self.start_epoch = 0
        self.last_opt_step = -1
        self.metrics = None

    # -----------------------------------------------------------------------------------------------------
    def _setup_dist(self):
        a = self.args
        self.device = select_device(a["device"], self.local_rank)
        if self.world_size > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=backend)
        if a["threads"]:
            torch.set_num_threads(int(a["threads"]))
        elif self.device.type == "cpu" and self.world_size > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.world_size))

    def _setup_dirs(self):
        a = self.args
        if self.resume_ckpt is not None:
            self.save_dir = Path(a["resume"]).parent.parent
        elif a["out"]:
            self.save_dir = Path(a["out"])
        else:
            self.save_dir = Path("runs/train") if a["exist_ok"] else _increment_dir(Path("runs/train"))
        a["out"] = str(self.save_dir)
        self.wdir = self.save_dir / "weights"
        self.last, self.best = self.wdir / "last.pt", self.wdir / "best.pt"
        self.csv = self.save_dir / "results.csv"
        if is_main(self.rank):
            self.wdir.mkdir(parents=True, exist_ok=True)
            import yaml
            with open(self.save_dir / "args.yaml", "w") as f:
                yaml.safe_dump({k: v for k, v in a.items()}, f, sort_keys=False)

    def _build_data(self):
        from .data import build_yolo_dataset
        a = self.args
        if self.world_size > 1 and self.rank != 0:
            dist.barrier()  # rank 0 alone generates the synthetic dataset and writes the label caches first
        self.data = resolve_data(a["data"], a)
        if a["data"] in (None, "", "synth"):
            a["data"] = self.data["yaml"]
        self.nc, self.names = self.data["nc"], self.data["names"]
        if "train" not in self.data:
            raise ValueError(f"{self.data['yaml']} has no 'train' split")
        hyp = {k: a[k] for k in ("hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear",
                                 "perspective", "flipud", "fliplr", "mosaic")}
        self.batch_size = int(a["batch"])
        if self.batch_size % self.world_size:
            raise ValueError(f"--batch {self.batch_size} must be a multiple of the number of processes "
                             f"({self.world_size}) under DDP")
        self.per_rank = self.batch_size // self.world_size
        self.train_set = build_yolo_dataset(self.data, "train", imgsz=a["imgsz"], augment=a["augment"], hyp=hyp,
                                            stride=32, prefix="train: ")
        if self.world_size > 1 and self.rank == 0:
            dist.barrier()
        self.val_loader = None
        if is_main(self.rank) and a["val"]:
            if "val" not in self.data:
                raise ValueError(f"{self.data['yaml']} has no 'val' split (or pass --val false)")
            from .validator import build_val_loader
            self.val_loader = build_val_loader(self.data, a["imgsz"], self.per_rank * 2, a["workers"])
        self.nb = len(self._train_loader(0))

    def _train_loader(self, epoch):
        """A fresh (non-persistent) loader per epoch: its workers see dataset changes (close_mosaic), and the
        shuffle order and worker seeds derive from (seed, epoch) only, so a resumed run repeats the same batches.
        Under DDP the DistributedSampler of every rank gets the same seed (rank-disjoint shards)."""
        from .data import build_dataloader
        return build_dataloader(self.train_set, self.per_rank, self.args["workers"], shuffle=self.args["shuffle"],
                                seed=epoch_seed(self.args["seed"], epoch, 0), rank=self.rank,
                                world_size=self.world_size)

    def _build_model(self):
        from .loss import V10DetectLoss
        from .model import YOLOv10
        a = self.args
        seed_everything(a["seed"], a["deterministic"])  # the same initial weights on every rank
        model = YOLOv10(a["model"], nc=self.nc)
        model.names = dict(self.names)
        for k, v in model.named_parameters():
            v.requires_grad_(".dfl" not in k)  # the DFL projection is fixed (official: always frozen)
        self.kernels_desc = ["reference PyTorch modules"]
        if a["kernels"] != "reference":
            import yolov10_kernels
            yolov10_kernels.accelerate(model, backend=a["kernels"])
            swapped = getattr(model, "accelerated", {}) or {}
            self.kernels_desc = [f"accelerate(backend={a['kernels']!r}): "
                                 + (", ".join(f"{k} x{v}" for k, v in swapped.items()) or "no module swapped")]
        factory, desc = make_assigner_factory(a["kernels"], self.rank)
        self.kernels_desc.append(desc)
        self.model = model.to(self.device)
        self.loss_fn = V10DetectLoss(self.model, hyp={k: a[k] for k in ("box", "cls", "dfl")},
                                     assigner_factory=factory)
        self.amp = bool(a["amp"]) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ema = ModelEMA(self.model)
        if self.world_size > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _build_optim(self):
        a = self.args
        self.accumulate = max(round(a["nbs"] / self.batch_size), 1)
        weight_decay = a["weight_decay"] * self.batch_size * self.accumulate / a["nbs"]
        iterations = math.ceil(len(self.train_set) / max(self.batch_size, a["nbs"])) * a["epochs"]
        self.optimizer, name, lr, mom = build_optimizer(unwrap(self.model), a["optimizer"], a["lr0"], a["momentum"],
                                                        weight_decay, iterations, self.nc, args=a)
        self.optim_desc = (f"{name}(lr={lr}, momentum={mom}) with parameter groups {len(self.optimizer.param_groups[1]['params'])} "
                           f"weight(decay={weight_decay:g}), {len(self.optimizer.param_groups[2]['params'])} "
                           f"norm weight(decay=0), {len(self.optimizer.param_groups[0]['params'])} bias(decay=0)")
        self.lf = lr_lambda(a["epochs"], a["lrf"], a["cos_lr"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)
        self.nw = max(round(a["warmup_epochs"] * self.nb), 100) if a["warmup_epochs"] > 0 else -1

    def _resume(self):
        ck = self.resume_ckpt
        if ck is None:
            return
        unwrap(self.model).load_state_dict(ck["model"])
        self.ema.ema.load_state_dict(ck["ema"])
        self.ema.updates = int(ck["ema_updates"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler") and self.amp:
            self.scaler.load_state_dict(ck["scaler"])
        self.start_epoch = int(ck["epoch"]) + 1
        self.best_fitness = ck.get("best_fitness")
        self.history = list(ck.get("results", []))
        self.last_opt_step = int(ck.get("last_opt_step", -1))
        _set_rng_state(ck.get("rng"))
        log(f"resuming {self.args['resume']} from epoch {self.start_epoch + 1} of {self.args['epochs']}", self.rank)
        self.resume_ckpt = None

    def setup(self):
        self._setup_dist()
        self._setup_dirs()
        self._build_data()
        self._build_model()
        self._build_optim()
        self._resume()
        self.scheduler.last_epoch = self.start_epoch - 1
        a = self.args
        log(f"yolov10 train: {a['model']} nc={self.nc} on {self.data['yaml']} | {len(self.train_set)} train images, "
            f"imgsz {a['imgsz']}, batch {self.batch_size} (x{self.accumulate} accumulation -> nominal {a['nbs']}), "
            f"{a['epochs']} epochs, device {self.device}"
            f"{f', DDP world size {self.world_size}' if self.world_size > 1 else ''}, AMP {'on' if self.amp else 'off'}, "
            f"{torch.get_num_threads()} threads, {a['workers']} workers", self.rank)
        log(f"kernels ({a['kernels']}): " + "; ".join(self.kernels_desc), self.rank)
        log(f"optimizer: {self.optim_desc}", self.rank)
        log(f"output: {self.save_dir}", self.rank)

    # -----------------------------------------------------------------------------------------------------
    def preprocess(self, batch):
        batch["img"] = batch["img"].to(self.device, non_blocking=True).float() / 255
        for k in ("cls", "bboxes", "batch_idx"):
            batch[k] = batch[k].to(self.device)
        return batch

    def compute_loss(self, batch):
        """Forward + loss; (loss scaled for DDP, items (6,))."""
        preds = self.model(batch["img"])
        loss, items = self.loss_fn(preds, batch)
        if self.world_size > 1:
            loss = loss * self.world_size
        return loss, items

    def _all_ranks_true(self, flag):
        if self.world_size > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=self.device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return bool(t.item() > 0)
        return flag

    def _nan_step(self, what, epoch, i):
        self.nan_streak += 1
        a = self.args
        if self.nan_streak >= a["max_nan"]:
            raise RuntimeError(f"{what} was NaN/Inf for {self.nan_streak} batches in a row (epoch {epoch + 1}, batch "
                               f"{i + 1}); training stopped. The weights may have diverged: lower --lr0, check the "
                               f"labels, or resume from {self.last} (the last good epoch).")
        if is_main(self.rank):
            warnings.warn(f"non-finite {what} at epoch {epoch + 1} batch {i + 1}: step skipped "
                          f"({self.nan_streak}/{a['max_nan']} in a row)", RuntimeWarning, stacklevel=2)
        self.optimizer.zero_grad()

    def optimizer_step(self):
        """Unscale, clip to norm 10, step, update; returns False when the gradients were not finite (CPU)."""
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
        if not self.amp and not torch.isfinite(norm):
            self.optimizer.zero_grad()
            return False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        self.ema.update(self.model)
        return True

    def train_epoch(self, epoch):
        from tqdm import tqdm
        a = self.args
        seed = epoch_seed(a["seed"], epoch, self.rank)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if a["mosaic"] and a["augment"] and epoch >= a["epochs"] - a["close_mosaic"] and not getattr(self, "_closed", False):
            log(f"closing mosaic for the last {a['close_mosaic']} epochs", self.rank)
            self.train_set.close_mosaic()
            self._closed = True
        loader = self._train_loader(epoch)
        self.model.train()
        self.optimizer.zero_grad()
        tloss, n_ok = None, 0
        pbar = enumerate(loader)
        if is_main(self.rank):
            pbar = tqdm(pbar, total=self.nb, desc=f"epoch {epoch + 1}/{a['epochs']}", dynamic_ncols=True,
                        file=sys.stdout, bar_format="{l_bar}{bar:10}{r_bar}", mininterval=1.0)
        for i, batch in pbar:
            ni = i + self.nb * epoch
            if ni <= self.nw:
                xi = [0, self.nw]
                self.accumulate = max(1, int(np.interp(ni, xi, [1, a["nbs"] / self.batch_size]).round()))
                for j, x in enumerate(self.optimizer.param_groups):
                    x["lr"] = float(np.interp(ni, xi, [a["warmup_bias_lr"] if j == 0 else 0.0,
                                                       x["initial_lr"] * self.lf(epoch)]))
                    if "momentum" in x:
                        x["momentum"] = float(np.interp(ni, xi, [a["warmup_momentum"], a["momentum"]]))
            batch = self.preprocess(batch)
            with torch.autocast(self.device.type, enabled=self.amp):
                loss, items = self.compute_loss(batch)
            if self._all_ranks_true(not bool(torch.isfinite(loss))):
                self._nan_step("loss", epoch, i)
                continue
            self.scaler.scale(loss).backward()
            items = items.detach().float().cpu()
            tloss = items if tloss is None else (tloss * n_ok + items) / (n_ok + 1)
            n_ok += 1
            if ni - self.last_opt_step >= self.accumulate:
                if self.optimizer_step():
                    self.nan_streak = 0
                else:
                    self._nan_step("gradient", epoch, i)
                self.last_opt_step = ni
            if is_main(self.rank):
                pbar.set_postfix_str(" ".join(f"{n}={v:.3f}" for n, v in zip(LOSS_NAMES, tloss.tolist())) +
                                     f" inst={len(batch['cls'])} sz={batch['img'].shape[-1]}", refresh=False)
            if a["max_steps"] and i + 1 >= a["max_steps"]:
                break
        if is_main(self.rank):
            pbar.close()
        self.lr = [float(x["lr"]) for x in self.optimizer.param_groups]
        self.scheduler.step()
        return tloss if tloss is not None else torch.full((6,), math.nan)

    def validate(self, final=False):
        v = Validator(self.val_loader, self.names, self.device, save_dir=self.save_dir, verbose=final,
                      progress=True)
        return v(self.ema.ema)

    def save(self, epoch, is_best):
        extra = dict(ema=deepcopy(self.ema.ema.state_dict()), ema_updates=self.ema.updates,
                     optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict() if self.amp else None,
                     epoch=epoch, best_fitness=self.best_fitness, args=dict(self.args), results=list(self.history),
                     last_opt_step=self.last_opt_step, rng=_rng_state(), date=datetime.now().isoformat(),
                     version="yolov10-kernels")
        from .checkpoint import save_checkpoint
        save_checkpoint(self.last, unwrap(self.model), **extra)
        if is_best:
            save_checkpoint(self.best, unwrap(self.model), **extra)

    def write_results(self):
        tmp = self.csv.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for r in self.history:
                w.writerow([r["epoch"], *(f"{x:.6g}" for x in r["losses"]), f"{r['map50']:.6g}",
                            f"{r['map50_95']:.6g}", *(f"{x:.6g}" for x in r["lr"]), f"{r['time']:.1f}"])
        os.replace(tmp, self.csv)
        try:
            from .plotting import plot_results
            plot_results(self.csv, self.save_dir / "results.png")
        except Exception as e:  # plotting must never stop training
            warnings.warn(f"could not plot {self.csv}: {e}")

    def train(self):
        # determinism is process-global: put back what the caller had once training ends
        det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
               torch.backends.cudnn.deterministic)
        try:
            return self._train()
        finally:
            torch.use_deterministic_algorithms(det[0], warn_only=det[1])
            torch.backends.cudnn.deterministic = det[2]
            if self.world_size > 1 and dist.is_initialized():
                dist.destroy_process_group()

    def _train(self):
        self.setup()
        a = self.args
        t_start = time.time() - (self.history[-1]["time"] if self.history else 0.0)
        for epoch in range(self.start_epoch, a["epochs"]):
            self.epoch = epoch
            tloss = self.train_epoch(epoch)
            final = epoch + 1 == a["epochs"]
            if is_main(self.rank):
                if self.val_loader is not None:
                    m = self.validate(final=final)
                else:
                    m = {"map50": math.nan, "map50_95": math.nan}
                self.metrics = m
                fit = fitness(m) if not math.isnan(m["map50_95"]) else -float(tloss.sum())
                is_best = self.best_fitness is None or fit >= self.best_fitness
                if is_best:
                    self.best_fitness = fit
                self.history.append({"epoch": epoch + 1, "losses": tloss.tolist(), "map50": m["map50"],
                                     "map50_95": m["map50_95"], "lr": self.lr, "time": time.time() - t_start})
                self.save(epoch, is_best)
                self.write_results()
                log(f"epoch {epoch + 1}/{a['epochs']}: losses {' '.join(f'{x:.4f}' for x in tloss.tolist())} | "
                    f"mAP50 {m['map50']:.4f} mAP50-95 {m['map50_95']:.4f} | {time.time() - t_start:.0f} s", self.rank)
            if self.world_size > 1:
                dist.barrier()
        if is_main(self.rank):
            log(f"done: {a['epochs'] - self.start_epoch} epochs in {(time.time() - t_start) / 60:.1f} min (total). "
                f"Weights {self.last} and {self.best}; {self.csv}; {self.save_dir / 'results.png'}", self.rank)
            if self.metrics is not None and not math.isnan(self.metrics["map50_95"]):
                log(f"final mAP50-95 {self.metrics['map50_95']:.4f}  mAP50 {self.metrics['map50']:.4f} (EMA weights, "
                    f"{self.data['yaml']} val split)", self.rank)
        return self.metrics


def train(**kwargs):
    """Python entry point: train(model='yolov10n', data=None, epochs=..., ...) -> final validation metrics."""
    return Trainer(kwargs).train()


# ---------------------------------------------------------------------------------------------------------
def _bool(s):
    if isinstance(s, bool):
        return s
    if str(s).lower() in ("1", "true", "yes", "on"):
        return True
    if str(s).lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


def build_parser():
    p = argparse.ArgumentParser(
        prog="yolov10 train",
        description="Train YOLOv10 (official ultralytics/THU-MIG mechanics). Without --data the embedded synthetic "
                    f"dataset is generated and used with CPU-sized defaults {SYNTH_PRESET}; with --data the official "
                    f"defaults {OFFICIAL} apply. Multi-GPU: torchrun --nproc_per_node N -m yolov10 train ...",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    D = DEFAULTS
    p.add_argument("--model", default=D["model"], help="yolov10n/s/m/b/l/x or a model YAML")
    p.add_argument("--data", default=None, help="data YAML (path/train/val/names); default: the synthetic dataset")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: official 100 / synthetic 10)")
    p.add_argument("--batch", type=int, default=None, help="global batch size (default: 16)")
    p.add_argument("--imgsz", type=int, default=None, help="train/val image size (default: official 640 / synthetic 256)")
    p.add_argument("--device", default=D["device"], help="cpu, 0, cuda:0 (default: cuda if available, else cpu)")
    p.add_argument("--workers", type=int, default=None, help="dataloader workers per process (default: official 8 / synthetic 2)")
    p.add_argument("--kernels", default=D["kernels"], choices=("auto", "reference", "triton"),
                   help="reference = pure PyTorch; auto = yolov10_kernels.accelerate(backend='auto') + fused "
                        "assigner when available; triton = accelerate(backend='triton') + fused assigner")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from a last.pt (or its run directory); no value = the newest runs/**/last.pt")
    p.add_argument("--out", default=None, help="run directory (default: runs/train, runs/train2, ...)")
    p.add_argument("--exist-ok", action="store_true", help="reuse runs/train instead of incrementing")
    p.add_argument("--seed", type=int, default=D["seed"])
    p.add_argument("--deterministic", type=_bool, default=D["deterministic"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--optimizer", default=D["optimizer"], help="auto, SGD, AdamW, Adam, NAdam, RAdam, Adamax, RMSProp")
    for k in ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr",
              "box", "cls", "dfl", "hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear",
              "perspective", "flipud", "fliplr", "mosaic"):
        p.add_argument(f"--{k.replace('_', '-')}", dest=k, type=float, default=D[k])
    p.add_argument("--nbs", type=int, default=None,
                   help="nominal batch size (gradient accumulation target; default: official 64 / synthetic 16)")
    p.add_argument("--cos-lr", dest="cos_lr", action="store_true", help="cosine instead of linear LR decay")
    p.add_argument("--close-mosaic", dest="close_mosaic", type=int, default=None,
                   help="turn mosaic off for the last N epochs (default: official 10 / synthetic 4)")
    p.add_argument("--amp", type=_bool, default=D["amp"], help="mixed precision on CUDA")
    p.add_argument("--val", type=_bool, default=D["val"], help="validate every epoch")
    p.add_argument("--max-nan", dest="max_nan", type=int, default=D["max_nan"],
                   help="stop after this many non-finite losses in a row")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="letterbox only (tests/debugging)")
    p.add_argument("--no-shuffle", dest="shuffle", action="store_false", help="fixed sample order (tests/debugging)")
    p.add_argument("--max-steps", dest="max_steps", type=int, default=None, help="stop each epoch after N batches")
    return p


def cli(argv=None):
    args = vars(build_parser().parse_args(argv))
    if args["resume"]:  # a resumed run takes its settings from the checkpoint
        args = {k: args[k] for k in ("resume", "device", "workers", "threads")}
    m = Trainer(args).train()
    return 0 if m is not None or dist_env()[0] > 0 else 1


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
