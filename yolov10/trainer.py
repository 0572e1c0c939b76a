"""YOLOv10 trainer: the official (ultralytics / THU-MIG) training mechanics in plain PyTorch. Command line:
`yolov10 train ...` (yolov10/cli.py); Python: `train(model='yolov10n', data=None, epochs=..., ...)`.

Mechanics:
- optimizer and LR schedule: yolov10/optim.py; weight_decay is scaled by batch * accumulate / nbs.
- gradient accumulation to a nominal batch nbs = 64; warmup over max(round(warmup_epochs * nb), 100)
  iterations (lr 0 -> lr0 * lf(epoch), bias lr warmup_bias_lr -> lr0 * lf(epoch), momentum 0.8 -> 0.937,
  accumulate 1 -> nbs / batch); linear LR decay lf(e) = (1 - e / epochs) * (1 - lrf) + lrf per epoch.
- AMP: fp16 autocast + GradScaler on CUDA, bf16 autocast of the model (loss in fp32) on CPUs with native bf16;
  grad-norm clip 10, EMA (0.9999, tau 2000) of all float state; validation (COCO mAP with pycocotools,
  one-to-one head; every epoch, or the last val_epochs) and checkpoints use the EMA. `.dfl` is frozen.
- on the CPU the model, its EMA and the batches are channels_last (faster there); checkpoints hold contiguous
  (NCHW) tensors, as any other loader expects.
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
`datasets/synth` (or $YOLOV10_DATASETS/synth) and used, with CPU-friendly defaults (SYNTH_PRESET in
yolov10/defaults.py).
"""
import csv
import math
import os
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

from .data.resolve import resolve_data
from .defaults import AUGMENT_DEFAULTS, DEFAULTS, LOSS_GAINS, resolve_args, uses_synth
from .ema import ModelEMA, unwrap
from .kernel_seam import accelerate, assigner_factory, fused_modules, measure_dispatch
from .optim import build_optimizer, lr_lambda
from .run_state import find_last, increment_dir, load_train_state, rng_state, set_rng_state
from .utils import (contiguous_state_dict, dist_env, epoch_seed, is_main, log, machine_summary, memory_format,
                    seed_everything, select_device)
from .validator import Validator, fitness

__all__ = ["Trainer", "train"]

LOSS_NAMES = ("box_om", "cls_om", "dfl_om", "box_oo", "cls_oo", "dfl_oo")
CSV_COLUMNS = ("epoch", *(f"train/{n}" for n in LOSS_NAMES), "metrics/mAP50", "metrics/mAP50-95",
               "lr/pg0", "lr/pg1", "lr/pg2", "time")


# ---------------------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, args=None, **overrides):
        args = dict(args or {}, **overrides)
        self.resume_ckpt = None
        if args.get("resume"):
            path = find_last(args["resume"])
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
            self.save_dir = Path("runs/train") if a["exist_ok"] else increment_dir(Path("runs/train"))
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
        self.data = resolve_data(a["data"])
        if uses_synth(a["data"]):
            a["data"] = self.data["yaml"]
        self.nc, self.names = self.data["nc"], self.data["names"]
        if "train" not in self.data:
            raise ValueError(f"{self.data['yaml']} has no 'train' split")
        hyp = {k: a[k] for k in AUGMENT_DEFAULTS}
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
            accelerate(model, a["kernels"], self.rank)
            swapped = fused_modules(model)
            self.kernels_desc = [f"accelerate(backend={a['kernels']!r}): "
                                 + (", ".join(f"{k} x{v}" for k, v in swapped.items()) or "no module swapped")]
        factory, desc = assigner_factory(a["kernels"], self.rank)
        self.kernels_desc.append(desc)
        # channels_last on the CPU (the EMA deepcopy below inherits it); checkpoints are written contiguous.
        # DDP keeps NCHW: its match with one process is not verified for channels_last (the DDP test is NCHW).
        self.memory_format = memory_format(self.device) if self.world_size == 1 else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.loss_fn = V10DetectLoss(self.model, hyp={k: a[k] for k in LOSS_GAINS},
                                     assigner_factory=factory)
        # mixed precision: fp16 autocast + GradScaler on CUDA (official); on a CPU with native bf16 (oneDNN) the model
        # runs under bf16 autocast (a yolov10n step 1.35x faster) and the loss and assigner in fp32; no scaler
        cuda = self.device.type == "cuda"
        self.amp = bool(a["amp"]) and (cuda or torch.ops.mkldnn._is_mkldnn_bf16_supported())
        self.amp_dtype = torch.float16 if cuda else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and cuda)
        self.dispatch_desc = measure_dispatch(self.model, a["kernels"], a.get("dispatch"),  # --dispatch measure
                                              (self.per_rank, model.ch, a["imgsz"], a["imgsz"]),
                                              self.amp_dtype if self.amp else torch.float32, self.amp, self.rank)
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
        set_rng_state(ck.get("rng"))
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
        if is_main(self.rank):
            log(f"machine: {machine_summary()}")
        log(f"kernels ({a['kernels']}): " + "; ".join(self.kernels_desc), self.rank)
        if self.dispatch_desc:
            log(self.dispatch_desc, self.rank)
        log(f"optimizer: {self.optim_desc}", self.rank)
        log(f"output: {self.save_dir}", self.rank)

    # -----------------------------------------------------------------------------------------------------
    def preprocess(self, batch):
        img = batch["img"].to(self.device, non_blocking=True, memory_format=self.memory_format)
        batch["img"] = img.float() / 255
        for k in ("cls", "bboxes", "batch_idx"):
            batch[k] = batch[k].to(self.device)
        return batch

    def compute_loss(self, batch):
        """Forward + loss; (loss scaled for DDP, items (6,))."""
        preds = self.model(batch["img"])
        if self.amp and self.device.type == "cpu":
            with torch.autocast("cpu", enabled=False):
                loss, items = self.loss_fn({k: [p.float() for p in v] for k, v in preds.items()}, batch)
        else:
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
        """Unscale, clip to norm 10, step, update; returns False when the gradients were not finite (without a
        GradScaler, which skips such steps itself)."""
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
        if not self.scaler.is_enabled() and not torch.isfinite(norm):
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
        seed_everything(epoch_seed(a["seed"], epoch, self.rank), deterministic=False)
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
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
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

    def _validates(self, epoch):
        """Validate after this epoch? Every epoch, or the last val_epochs ones (the last always)."""
        a = self.args
        return self.val_loader is not None and (not a["val_epochs"] or epoch >= a["epochs"] - a["val_epochs"])

    def validate(self, final=False):
        v = Validator(self.val_loader, self.names, self.device, save_dir=self.save_dir, verbose=final,
                      progress=True)
        return v(self.ema.ema)

    def save(self, epoch, is_best):
        extra = dict(ema=contiguous_state_dict(self.ema.ema), ema_updates=self.ema.updates,
                     optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict() if self.amp else None,
                     epoch=epoch, best_fitness=self.best_fitness, args=dict(self.args), results=list(self.history),
                     last_opt_step=self.last_opt_step, rng=rng_state(), date=datetime.now().isoformat(),
                     version="yolov10-kernels")
        from .checkpoint import save_checkpoint
        model = deepcopy(unwrap(self.model)).to(memory_format=torch.contiguous_format)
        save_checkpoint(self.last, model, **extra)
        if is_best:
            save_checkpoint(self.best, model, **extra)

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
                if self._validates(epoch):
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
                val = ("not validated" if math.isnan(m["map50_95"]) else
                       f"mAP50 {m['map50']:.4f} mAP50-95 {m['map50_95']:.4f} (validation {m.get('time', 0.0):.0f} s)")
                log(f"epoch {epoch + 1}/{a['epochs']}: losses {' '.join(f'{x:.4f}' for x in tloss.tolist())} | "
                    f"{val} | {time.time() - t_start:.0f} s", self.rank)
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
