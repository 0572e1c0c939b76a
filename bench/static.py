"""python -m bench.static [--quick] [--jobs N] [--out DIR]: the static GPU-readiness report, on the CPU.

For every Triton kernel that the fused ops launch at the target shapes (yolov10n/s/m at 640 px: batch 1 eval,
batch 64 train; bf16, fp16, fp32), and every config its launcher or autotuner may launch there, compile for
sm_90a (bench/static_compile.py) and record registers, spilled bytes, shared memory, the MMA instruction and the
compile time; per op and mode, the kernel launches and the bytes their tensor arguments span (bench/static_ops.py
adds host-op counts and the eager side). The launches are found by running the real launchers on fake CUDA
tensors (bench/static_capture.py), so the report follows the kernels as they change.

Writes bench/results/static-<date>.json ({"rows", "ops", "model_step", "env"}: per compiled config, per op and
mode, the yolov10n train step's host ops ours vs the reference's) and a markdown table beside it; tests/
test_gpu_budgets.py enforces the budgets on the committed one. --quick: one scale (s), the launchers' own configs
plus a sample of each autotuner's."""
import argparse
import concurrent.futures as cf
import datetime
import glob
import hashlib
import json
import multiprocessing as mp
import os
import platform
import time

SCALES = ("n", "s", "m")
DTYPES = ("bfloat16", "float16", "float32")
EVAL_BATCH, TRAIN_BATCH = 1, 64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_SOURCES = "yolov10_kernels/ops/*.py"


def sources_hash():
    """sha256 over the kernel sources (path and content), the report's link to the code it describes."""
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(ROOT, KERNEL_SOURCES))):
        h.update(os.path.relpath(path, ROOT).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def _configs(launch, quick):
    if not quick or len(launch.configs) <= 2:
        return launch.configs
    return [launch.configs[0], launch.configs[-1]]


def capture(scales, dtypes, log):
    """Every Launch of every op at the targets, labelled by op / scale / batch / dtype / mode."""
    import torch
    from . import ops
    from .static_capture import Recorder, capture_op
    rec = Recorder()
    for scale in scales:
        for dtype in dtypes:
            for op in ops.OPS:
                for train in (False, True):
                    t0 = time.time()
                    capture_op(rec, op, scale, TRAIN_BATCH if train else EVAL_BATCH, getattr(torch, dtype), train)
                    log(f"captured {rec.context} ({time.time() - t0:.1f} s)")
    return rec.launches


def jobs_and_rows(launches, quick):
    """Unique compile jobs and the report rows pointing at them."""
    from yolov10_kernels.warmup import variant_key
    jobs, rows = {}, []
    for ln in launches:
        args = {k: list(v) if isinstance(v, tuple) else v for k, v in ln.args.items()}
        consts = {k: list(v) if isinstance(v, tuple) else v for k, v in ln.constexprs.items()}
        for cfg in _configs(ln, quick):
            key = json.dumps(variant_key(ln, cfg), default=str)
            jobs.setdefault(key, (key, ln.module, ln.kernel, args, consts, cfg))
            op, scale, batch, dtype, mode = ln.context.split()
            rows.append({"kernel": ln.kernel, "config": cfg, "dtype": dtype, "shape": f"{op} {scale} {batch} {mode}",
                         "op": op, "mode": mode, "tuned": ln.tuned, "autotune_key": ln.key,
                         "constexprs": consts, "_job": key})
    return list(jobs.values()), rows


def compile_all(jobs, n_jobs, log):
    from .static_compile import compile_job, worker_init
    results = {}
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(n_jobs, mp_context=ctx, initializer=worker_init) as pool:
        for i, (key, res) in enumerate(pool.map(compile_job, jobs, chunksize=1)):
            results[key] = res
            if i % 20 == 0:
                log(f"compiled {i + 1}/{len(jobs)}")
    return results


def env_info(quick, n_jobs, seconds):
    import torch
    import triton
    return {"sources_sha256": sources_hash(), "sources": KERNEL_SOURCES, "target": "sm_90a (GPUTarget cuda 90)",
            "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            "quick": quick, "jobs": n_jobs, "seconds": round(seconds, 1),
            "date": datetime.date.today().isoformat(), "smem_limit": 227 * 1024}


def build_report(quick, n_jobs, scales=None, dtypes=DTYPES, log=print):
    t0 = time.time()
    os.environ.pop("TRITON_INTERPRET", None)
    launches = capture(scales or (("s",) if quick else SCALES), dtypes, log)
    jobs, rows = jobs_and_rows(launches, quick)
    log(f"{len(launches)} launches, {len(rows)} rows, {len(jobs)} unique compiles")
    results = compile_all(jobs, n_jobs, log)
    for r in rows:
        r.update(results[r.pop("_job")])
    from .static_ops import count_model_step, op_summary
    ops = op_summary(launches, scales or (("s",) if quick else SCALES), log)
    step = {"scale": "n", "batch": 2, "imgsz": 640, **count_model_step("n", 2, 640)}
    log(f"yolov10n train step host ops: ours {step['ours']['host_ops']}, reference {step['eager']['host_ops']}")
    return {"rows": rows, "ops": ops, "model_step": step, "env": env_info(quick, n_jobs, time.time() - t0)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.static", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="scale s only; launcher configs + a sample of autotuned ones")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="compile worker processes")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    a = p.parse_args(argv)
    report = build_report(a.quick, a.jobs)
    from .static_table import write_report
    path = write_report(report, a.out)
    print(f"wrote {path} and its .md")


if __name__ == "__main__":
    main()
