"""`yolov10 benchmark`: the deployment paths side by side in one process on the same input: eager NCHW,
eager channels_last, the fused kernels (`accelerate`), torch.compile and the ONNX export in ONNX Runtime;
latency (median, p20-p80) and throughput of the fused one-to-one model, plus the checkpoint's mAP50-95 when
a checkpoint and data are given. The timer is the one of bench/common.py, rewritten here because the package
sits below bench/."""
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

ROWS = ("eager NCHW", "eager channels_last", "accelerate", "torch.compile", "onnxruntime")


def time_call(fn, warmup=3, iters=20, sync=None):
    """Median, p20 and p80 milliseconds of fn() over iters calls after warmup calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t) * 1e3)
    q = statistics.quantiles(times, n=10, method="inclusive")
    return statistics.median(times), q[1], q[7]


def _torch_rows(model, x, names):
    """name -> (callable, note) for the PyTorch rows asked for; a row that cannot run here is (None, why)."""
    import copy
    from . import kernels

    def runner(m, channels_last):
        m = copy.deepcopy(m)
        xi = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        if channels_last:
            m.to(memory_format=torch.channels_last)
        return lambda: m(xi)

    cpu = x.device.type == "cpu"
    rows = {}
    if "eager NCHW" in names:
        rows["eager NCHW"] = (runner(model, False), "fused, inference_mode")
    if "eager channels_last" in names:
        rows["eager channels_last"] = (runner(model, True), "fused, inference_mode")
    if "accelerate" in names:
        m = kernels.accelerate(copy.deepcopy(model), backend="auto")
        note = "fused modules, backend auto" + (" (reference path on CPU tensors), channels_last" if cpu else "")
        rows["accelerate"] = (runner(m, cpu), note)
    if "torch.compile" in names:
        m = copy.deepcopy(model)
        if cpu:
            m.to(memory_format=torch.channels_last)
        from .export import EndToEnd
        compiled = torch.compile(EndToEnd(m))  # the input checks' int(tensor) would break the graph
        xi = x.contiguous(memory_format=torch.channels_last) if cpu else x
        rows["torch.compile"] = (lambda: compiled(xi), "inductor" + (", channels_last" if cpu else ""))
    return rows


def _onnx_row(weights, x, imgsz, tmp):
    """Export to ONNX (static batch) and return (callable, note), or (None, why) when it cannot run."""
    from .export import export
    from .onnx_runtime import OnnxRunner
    try:
        path = export(weights, "onnx", imgsz=imgsz, batch=x.shape[0], out=Path(tmp) / "model.onnx")
        ort = OnnxRunner(path, threads=torch.get_num_threads())
    except ImportError as e:
        return None, str(e).split(";")[0]
    xn = x.cpu().numpy()
    import onnxruntime
    return (lambda: ort(xn)), f"onnxruntime {onnxruntime.__version__}, CPU provider, opset 17"


def benchmark(model_name=None, weights=None, imgsz=None, batch=1, device="cpu", data=None, rows=ROWS,
              warmup=3, iters=20, out="runs/benchmark"):
    """Time every row; returns the result dict (also written as JSON and markdown under `out`)."""
    from . import YOLOv10
    from .checkpoint import checkpoint_imgsz, load_checkpoint, save_checkpoint
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise ValueError(f"unknown benchmark rows {sorted(unknown)}: expected some of {', '.join(ROWS)}")
    if (model_name is None) == (weights is None):
        raise ValueError("give exactly one of --model SCALE and --weights CKPT")
    imgsz = (checkpoint_imgsz(weights) if weights else 640) if imgsz is None else imgsz
    if imgsz % 32:
        raise ValueError(f"--imgsz must be a multiple of 32, got {imgsz}")
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else None
    result = {"model": weights or model_name, "imgsz": imgsz, "batch": batch, "device": device,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor(),
              "date": date.today().isoformat(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        # a scale name's random-init model goes through a temporary checkpoint, as the export needs one
        src = weights or save_checkpoint(Path(tmp) / "model.pt", YOLOv10(model_name))
        model = load_checkpoint(src).fuse().eval().to(device)
        x = torch.rand(batch, 3, imgsz, imgsz, device=device)
        candidates = _torch_rows(model, x, rows)
        if "onnxruntime" in rows:
            candidates["onnxruntime"] = _onnx_row(src, x, imgsz, tmp)
        for name in (r for r in ROWS if r in candidates):
            fn, note = candidates[name]
            row = {"name": name, "note": note}
            if fn is not None:
                med, p20, p80 = time_call(fn, warmup, iters, sync)
                row.update(ms=med, p20=p20, p80=p80, images_per_s=batch / med * 1e3)
            result["rows"].append(row)
    if weights and data:
        from .validator import validate
        result["map50_95"] = validate(weights, data, imgsz, device=device, verbose=False)["map50_95"]
    _write(result, Path(out))
    return result


def format_table(result):
    lines = [f"{result['model']}, imgsz {result['imgsz']}, batch {result['batch']}, {result['device']}, "
             f"{result['threads']} threads, torch {result['torch']}, {result['date']}", "",
             "| path | ms median (p20-p80) | images/s | notes |", "|---|---|---|---|"]
    timed = [r for r in result["rows"] if "ms" in r]
    best = min(timed, key=lambda r: r["ms"])["name"] if timed else None
    for r in result["rows"]:
        if "ms" in r:
            name = f"**{r['name']}**" if r["name"] == best else r["name"]
            lines.append(f"| {name} | {r['ms']:.1f} ({r['p20']:.1f}-{r['p80']:.1f}) | {r['images_per_s']:.1f} | "
                         f"{r['note']} |")
        else:
            lines.append(f"| {r['name']} | not run | - | {r['note']} |")
    if "map50_95" in result:
        lines += ["", f"mAP50-95 (PyTorch, val split): {result['map50_95']:.4f}"]
    return "\n".join(lines)


def _write(result, out):
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(str(result['model'])).stem}-{result['imgsz']}-b{result['batch']}-{result['device']}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    table = format_table(result)
    (out / f"{stem}.md").write_text(table + "\n")
    print(table)
    print(f"\nwritten to {out / stem}.json and .md")
