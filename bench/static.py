"""python -m bench.static [--quick] [--gpus T4,RTX3090,...] [--jobs N] [--out DIR]: the static GPU-readiness
report, on the CPU.

For each GPU profile (yolov10_kernels.gpus.PROFILES, or those --gpus names), every Triton kernel that the fused
ops launch there at the target shapes (yolov10n/s/m at 640 px: batch 1 eval, batch 64 train; bf16, fp16, fp32),
and every config its launcher or autotuner may launch there, compile for the profile's target
(bench/static_compile.py) and record registers, spilled bytes, shared memory, the MMA instruction and the
compile time; per op and mode, the kernel launches and the bytes their tensor arguments span (bench/static_ops.py
adds host-op counts and the eager side). The launches are found by running the real launchers on fake CUDA
tensors that report the profile's GPU (bench/static_capture.py), so the report follows the kernels and their
per-GPU choices as they change. Compiles are shared: one job per (arch, variant), so profiles of one arch
(H100 / H200, L4 / RTX4090) and the variants two profiles have in common compile once.

Writes bench/results/static-<date>.json ({"rows", "compiles", "gpus", "ops", "model_step", "memory", "env"}: per profile and
launched config a row (`gpu`, `target`) pointing at its compile, per profile the launch counts, per op and mode,
the yolov10n train step's host ops ours vs the reference's; "memory": per model (yolov10n/s, yolo11n/s, yolo26n/s;
batch 16, 640 px, AMP) the bytes autograd saves for backward, eager vs ours, whole model and per fused module kind,
and the model's forward + backward host ops (bench/static_memory.py); rows stored as columns + data, see
bench/static_table.py) and a markdown table beside it; tests/test_gpu_budgets.py enforces the budgets on the
committed one, per profile. --quick: one scale (s), the launchers' own configs plus a sample of each
autotuner's."""
import argparse
import concurrent.futures as cf
import datetime
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
    """sha256 over the kernel sources (KERNEL_SOURCES: path and content), the report's link to the code it
    describes; the package's own (yolov10_kernels.dispatch keys its cache by it), imported here lazily."""
    from yolov10_kernels.dispatch import sources_hash as package_sources_hash
    return package_sources_hash()


def _configs(launch, quick):
    if not quick or len(launch.configs) <= 2:
        return launch.configs
    return [launch.configs[0], launch.configs[-1]]


def capture(scales, dtypes, log, gpu="H200"):
    """Every Launch of every op at the targets on `gpu` (a profile or its name), labelled by op / scale / batch /
    dtype / mode."""
    import torch
    from . import ops
    from .static_capture import Recorder, capture_op
    rec = Recorder()
    for scale in scales:
        for dtype in dtypes:
            for op in ops.OPS:
                for train in (False, True):
                    t0 = time.time()
                    capture_op(rec, op, scale, TRAIN_BATCH if train else EVAL_BATCH, getattr(torch, dtype), train,
                               gpu=gpu)
                    log(f"captured {gpu} {rec.context} ({time.time() - t0:.1f} s)")
    return rec.launches


def jobs_and_rows(launches, quick, gpu="H200", jobs=None):
    """The compile jobs of `launches` (captured on profile `gpu`) added to `jobs` ({key: job}, unique per arch and
    variant, shared between profiles) and the report rows pointing at them (`launch`: the launch's index). Returns
    (jobs as a list, rows)."""
    from yolov10_kernels import gpus
    from yolov10_kernels.warmup import variant_key
    from .static_loops import longest_loop
    profile = gpus.resolve(gpu)
    jobs, rows = ({} if jobs is None else jobs), []
    for i, ln in enumerate(launches):
        args = {k: list(v) if isinstance(v, tuple) else v for k, v in ln.args.items()}
        consts = {k: list(v) if isinstance(v, tuple) else v for k, v in ln.constexprs.items()}
        for cfg in _configs(ln, quick):
            key = json.dumps([profile.arch, variant_key(ln, cfg)], default=str)
            jobs.setdefault(key, (key, profile.name, ln.module, ln.kernel, args, consts, cfg))
            op, scale, batch, dtype, mode = ln.context.split()
            loop, unknown = longest_loop(ln, cfg)
            rows.append({"gpu": profile.name, "target": profile.target, "launch": i, "kernel": ln.kernel,
                         "config": cfg, "dtype": dtype, "shape": f"{op} {scale} {batch} {mode}", "op": op,
                         "mode": mode, "tuned": ln.tuned, "autotune_key": ln.key, "constexprs": consts,
                         "longest_loop": loop, "unknown_loops": unknown, "_job": key})
    return list(jobs.values()), rows


def compile_all(jobs, n_jobs, log):
    """{key: compile result} of every job, in n_jobs worker processes; one pool per arch, whose workers target it
    from the start (Triton binds a kernel to the target of its first compile in a process)."""
    from yolov10_kernels import gpus
    from .static_compile import compile_job, worker_init
    results, by_arch = {}, {}
    for job in jobs:
        by_arch.setdefault(gpus.resolve(job[1]).arch, []).append(job)
    ctx = mp.get_context("spawn")
    for arch, group in sorted(by_arch.items()):
        with cf.ProcessPoolExecutor(n_jobs, mp_context=ctx, initializer=worker_init, initargs=(arch,)) as pool:
            for key, res in pool.map(compile_job, group, chunksize=1):
                results[key] = res
                if len(results) % 20 == 0:
                    log(f"compiled {len(results)}/{len(jobs)}")
    return results


def env_info(quick, n_jobs, seconds, profiles):
    import torch
    import triton
    return {"sources_sha256": sources_hash(), "sources": KERNEL_SOURCES,
            "targets": sorted({p.target for p in profiles}), "profiles": {p.name: p.limits() for p in profiles},
            "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            "quick": quick, "jobs": n_jobs, "seconds": round(seconds, 1),
            "date": datetime.date.today().isoformat()}


def gpu_summary(rows):
    """Per profile: launches, launchable launches (every config it may run with launches there), configs
    (rows), spilling launchable configs and configs that cannot launch."""
    out = {}
    for r in rows:
        s = out.setdefault(r["gpu"], {"launches": set(), "unlaunchable": set(), "configs": 0, "spills": 0,
                                      "unlaunchable_configs": 0})
        s["launches"].add(r["launch"])
        s["configs"] += 1
        if not r["launchable"]:
            s["unlaunchable"].add(r["launch"])
            s["unlaunchable_configs"] += 1
        elif r.get("spill_bytes"):
            s["spills"] += 1
    return {g: {"launches": len(s["launches"]), "launchable": len(s["launches"]) - len(s["unlaunchable"]),
                "configs": s["configs"], "spills": s["spills"], "unlaunchable_configs": s["unlaunchable_configs"]}
            for g, s in out.items()}


def build_report(quick, n_jobs, scales=None, dtypes=DTYPES, log=print, gpus=None):
    """The report (see the module docstring) for the profiles `gpus` (names; default: every profile)."""
    from yolov10_kernels import gpus as gpu_table
    from .static_compile import launchable
    t0 = time.time()
    os.environ.pop("TRITON_INTERPRET", None)
    profiles = list({p.name: p for p in (gpu_table.resolve(g) for g in (gpus or gpu_table.PROFILES))}.values())
    scales = scales or (("s",) if quick else SCALES)
    jobs, rows, launches = {}, [], None
    for p in profiles:
        launches = capture(scales, dtypes, log, gpu=p.name)
        _, more = jobs_and_rows(launches, quick, p, jobs)
        rows += more
        log(f"{p.name} ({p.target}): {len(launches)} launches, {len(more)} configs; {len(jobs)} unique compiles so far")
    results = compile_all(list(jobs.values()), n_jobs, log)
    by_name = {p.name: p for p in profiles}
    for r in rows:
        r.update(results[r["_job"]])
        r["launchable"] = launchable(r, by_name[r["gpu"]])
    from .static_ops import count_model_step, op_summary
    ops = op_summary(launches, scales, log)  # host ops and bytes do not depend on the GPU
    step = {"scale": "n", "batch": 2, "imgsz": 640, **count_model_step("n", 2, 640)}
    log(f"yolov10n train step host ops: ours {step['ours']['host_ops']}, reference {step['eager']['host_ops']}")
    from .static_memory import measure_isolated
    memory = measure_isolated()  # per model: saved-for-backward bytes and host ops of an AMP train step
    for m in memory:
        log(f"{m['model']} saved for backward: ours {m['ours']['saved_bytes']['total'] / 2**20:.0f} MiB, eager "
            f"{m['eager']['saved_bytes']['total'] / 2**20:.0f} MiB")
    summary = gpu_summary(rows)
    for g, s in summary.items():
        log(f"{g}: {s['launches']} launches, {s['launchable']} launchable, {s['spills']} spilling configs")
    return {"rows": rows, "gpus": summary, "ops": ops, "model_step": step, "memory": memory,
            "env": env_info(quick, n_jobs, time.time() - t0, profiles)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.static", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="scale s only; launcher configs + a sample of autotuned ones")
    p.add_argument("--gpus", default=None, help="comma-separated profiles or targets (T4,RTX3090,sm_89; default: all "
                   "of yolov10_kernels.gpus.PROFILES)")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="compile worker processes")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    a = p.parse_args(argv)
    report = build_report(a.quick, a.jobs, gpus=a.gpus.split(",") if a.gpus else None)
    from .static_table import write_report
    path = write_report(report, a.out)
    print(f"wrote {path} and its .md")


if __name__ == "__main__":
    main()
