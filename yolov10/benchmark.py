"""`yolov10 benchmark`: the deployment paths side by side in one process on the same input: eager NCHW,
eager channels_last, the fused kernels (`accelerate`), a plain torch.compile, the ONNX export in ONNX Runtime
and the package's best CPU path (`TorchRunner(compile=True)`); latency (median, p20-p80), throughput and
setup time (build, compile or export, warm-up) of the fused one-to-one model, plus each row's mAP50-95 on the
data's val split when a checkpoint and data are given.

The rows are timed round-robin, one call of each row per round, so that the load of a shared machine falls on
all rows alike; every row runs under torch.inference_mode, takes the same NCHW float input and returns CPU
detections, so layout conversions and the copy back are part of each row's time.

On a CPU shared with other processes, PyTorch's OpenMP threads spin at every op's barrier by default and
lose their time slices to the other load: measured on a 2-core machine at load average 5-8, channels_last
eager took 160-480 ms per 640 px image with the default and 110 ms with OMP_WAIT_POLICY=PASSIVE (ONNX
Runtime 100-190 ms with its threads spinning, 100 ms without). The variable is read when torch is imported,
so it is set in the environment of the command; OnnxRunner follows it too, and the result records it."""
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

BEST = "yolov10 (best CPU)"
ROWS = ("eager NCHW", "eager channels_last", "accelerate", "torch.compile", "onnxruntime", BEST)
PAD = 114 / 255  # the letterbox's grey


def quantiles(times):
    """Median, p20 and p80 of a list of milliseconds."""
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [times[0]] * 9
    return statistics.median(times), q[1], q[7]


def time_rows(fns, warmup=5, iters=20, sync=None):
    """{name: (median, p20, p80) ms} of each fn() over `iters` rounds; each round calls every fn once, in turn,
    so that a varying load affects all of them alike. Each fn is called `warmup` times first."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            if sync:
                sync()
            t = time.perf_counter()
            fn()
            if sync:
                sync()
            times[name].append((time.perf_counter() - t) * 1e3)
    return {name: quantiles(ts) for name, ts in times.items()}


def _row_makers(model, src, x, tmp):
    """name -> (make, note): make() returns a runner, (B, 3, S, S) float tensor -> (B, 300, 6) CPU tensor."""
    from . import kernel_seam as kernels
    from .export import EndToEnd, export
    from .onnx_runtime import OnnxRunner
    from .predict import TorchRunner
    cpu = x.device.type == "cpu"

    def plain_compile():
        net = torch.compile(EndToEnd(copy.deepcopy(model)))  # EndToEnd: the input checks would break the graph
        return lambda t: net(t).float().cpu()

    def onnx():
        path = export(src, "onnx", imgsz=x.shape[-1], batch=x.shape[0], out=Path(tmp) / "model.onnx")
        # no spinning: ONNX Runtime's threads would keep spinning into the next row's turn and slow it down
        ort = OnnxRunner(path, threads=torch.get_num_threads(), spin=False)
        return lambda t: ort(t.cpu().numpy())

    def ort_note():
        import onnxruntime
        return f"onnxruntime {onnxruntime.__version__}, CPU provider, opset 17, {torch.get_num_threads()} threads"

    return {
        "eager NCHW": (lambda: TorchRunner(copy.deepcopy(model), channels_last=False), "TorchRunner NCHW"),
        "eager channels_last": (lambda: TorchRunner(copy.deepcopy(model), channels_last=True),
                                "TorchRunner channels_last"),
        "accelerate": (lambda: TorchRunner(kernels.accelerate(copy.deepcopy(model), backend="auto")),
                       "fused drop-ins, backend auto" + (": reference path on CPU tensors, channels_last" if cpu
                                                         else "")),
        "torch.compile": (plain_compile, "torch.compile(model), defaults, NCHW"),
        "onnxruntime": (onnx, ort_note),
        BEST: (lambda: TorchRunner(copy.deepcopy(model), compile=True),
               "TorchRunner(compile=True): inductor freezing, static shape, NCHW"),
    }


class StaticBatches(torch.nn.Module):
    """A runner as a model for the validator (which gives it imgsz x imgsz batches when it runs a runner): the
    images go through `batch` at a time, the last group filled with grey images, so that a static-shape row
    (ONNX export, compiled graph) sees only the shape it was built for."""

    def __init__(self, runner, imgsz, batch):
        super().__init__()
        self.runner, self.imgsz, self.batch = runner, imgsz, batch  # a plain callable: no submodule

    def forward(self, img):
        if tuple(img.shape[2:]) != (self.imgsz, self.imgsz):
            raise ValueError(f"the rows take {self.imgsz}x{self.imgsz} images, got {tuple(img.shape)}")
        out = []
        for i in range(0, len(img), self.batch):
            chunk = img[i:i + self.batch]
            fill = chunk.new_full((self.batch - len(chunk), *chunk.shape[1:]), PAD)
            out.append(self.runner(torch.cat([chunk, fill]).contiguous())[:len(chunk)])
        return torch.cat(out)


def _check_args(model_name, weights, imgsz, rows, iters):
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise ValueError(f"unknown benchmark rows {sorted(unknown)}: expected some of {', '.join(ROWS)}")
    if (model_name is None) == (weights is None):
        raise ValueError("give exactly one of --model SCALE and --weights CKPT")
    if imgsz % 32:
        raise ValueError(f"--imgsz must be a multiple of 32, got {imgsz}")
    if iters < 1:
        raise ValueError(f"--iters must be >= 1, got {iters}")


def benchmark(model_name=None, weights=None, imgsz=None, batch=1, device="cpu", data=None, rows=ROWS,
              warmup=5, iters=20, out="runs/benchmark"):
    """Time every row; returns the result dict (also written as JSON and markdown under `out`)."""
    from . import YOLOv10
    from .checkpoint import checkpoint_imgsz, load_checkpoint, save_checkpoint
    imgsz = (checkpoint_imgsz(weights) if weights else 640) if imgsz is None else imgsz
    _check_args(model_name, weights, imgsz, rows, iters)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else None
    result = {"model": weights or model_name, "imgsz": imgsz, "batch": batch, "device": device,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor(),
              "date": date.today().isoformat(), "warmup": warmup, "iters": iters,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
              "loadavg_start": os.getloadavg()[0], "rows": []}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        # a scale name's random-init model goes through a temporary checkpoint, as the export needs one
        src = weights or save_checkpoint(Path(tmp) / "model.pt", YOLOv10(model_name))
        model = load_checkpoint(src).fuse().eval().to(device)
        x = torch.rand(batch, 3, imgsz, imgsz, device=device)
        runners = {}
        for name, (make, note) in _row_makers(model, src, x, tmp).items():
            if name not in rows:
                continue
            row = {"name": name}
            try:
                t = time.perf_counter()
                runners[name] = make()
                for _ in range(warmup):  # timed here, so that compile and export time is reported apart
                    runners[name](x)
                row["setup_s"] = time.perf_counter() - t
            except ImportError as e:  # an optional extra (ONNX) that is not installed: reported, not timed
                note = str(e).split(";")[0]
            row["note"] = note() if callable(note) and name in runners else note
            result["rows"].append(row)
        stats = time_rows({n: (lambda r=r: r(x)) for n, r in runners.items()}, 0, iters, sync)
        for row in result["rows"]:
            if row["name"] in stats:
                med, p20, p80 = stats[row["name"]]
                row.update(ms=med, p20=p20, p80=p80, images_per_s=batch / med * 1e3)
        result["loadavg_end"] = os.getloadavg()[0]
        if weights and data:
            _add_map(result, runners, weights, data, imgsz, batch, device)
    _write(result, Path(out))
    return result


def _add_map(result, runners, weights, data, imgsz, batch, device):
    """Each timed row's mAP50-95 on the data's val split, run through the row itself."""
    from .validator import validate
    for row in result["rows"]:
        if row["name"] in runners:
            runner = StaticBatches(runners[row["name"]], imgsz, batch)
            row["map50_95"] = validate(weights, data, imgsz, device=device, verbose=False, runner=runner)["map50_95"]


def format_table(result):
    lines = [f"{result['model']}, imgsz {result['imgsz']}, batch {result['batch']}, {result['device']}, "
             f"{result['threads']} threads, torch {result['torch']}, {result['date']}, {result['iters']} rounds "
             f"round-robin, load average {result['loadavg_start']:.1f} -> {result['loadavg_end']:.1f}, "
             f"OMP_WAIT_POLICY {result['omp_wait_policy']}", ""]
    has_map = any("map50_95" in r for r in result["rows"])
    lines += ["| path | ms median (p20-p80) | images/s | setup s |" + (" mAP50-95 |" if has_map else "") + " notes |",
              "|---|---|---|---|" + ("---|" if has_map else "") + "---|"]
    timed = [r for r in result["rows"] if "ms" in r]
    best = min(timed, key=lambda r: r["ms"])["name"] if timed else None
    for r in result["rows"]:
        m = (f" {r['map50_95']:.4f} |" if "map50_95" in r else " - |") if has_map else ""
        if "ms" in r:
            name = f"**{r['name']}**" if r["name"] == best else r["name"]
            lines.append(f"| {name} | {r['ms']:.1f} ({r['p20']:.1f}-{r['p80']:.1f}) | {r['images_per_s']:.1f} | "
                         f"{r['setup_s']:.1f} |{m} {r['note']} |")
        else:
            lines.append(f"| {r['name']} | not run | - | - |{m} {r['note']} |")
    return "\n".join(lines)


def _write(result, out):
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(str(result['model'])).stem}-{result['imgsz']}-b{result['batch']}-{result['device']}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    table = format_table(result)
    (out / f"{stem}.md").write_text(table + "\n")
    print(table)
    print(f"\nwritten to {out / stem}.json and .md")
