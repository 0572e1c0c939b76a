"""The one-call GPU session (bash bench/gpu_session.sh wraps this): seven phases, each in its own process with
its own time budget, each writing its result file into $OUT as it goes (a timeout or a signal keeps what
was written). The GPU machine: torch 2.11 + triton 3.6 preinstalled, no ultralytics, no network.

  python -m bench.gpu_session --out DIR [--dry-run] [--phase NAME] [--limit-s S]

phases (in order) and files:
  env     env.json          GPU, driver, versions, copy bandwidth, bf16 matmul rate
  build   build.json        the extension (parallel ninja) + every Triton kernel variant the later phases
                            launch, compiled in a pool before any timing (yolov10_kernels.warmup, bench/warm.py)
  check   correctness.json  every op eval/train fwd+bwd fp32/bf16/fp16, target and odd shapes; the model;
                            the CUDA assigner against the C++ op; the measured dispatch's decisions with
                            their timings (yolov10n b16 640 px bf16 AMP, eval and train) (bench/gpu_check.py)
  pytest  pytest.xml        the tests that skip without CUDA, then the test files with a CUDA path, with pytest
                            (JUnit XML; pytest's output goes into session.log) (bench/gpu_tests.py)
  sweep   sweep.json        every config of every autotuned kernel at the target shapes (bench/sweep.py)
  bench   bench.json        the issue-target rows (eager, torch.compile max-autotune, ours), e2e n/s
  ncu     ncu.json          speed of light of the five heaviest kernels, where ncu reads counters
plus session.log (everything printed). --dry-run: every phase on the CPU at tiny sizes (TRITON_INTERPRET=1,
no timing targets). --phase NAME: that phase alone (for the minutes left after a first run)."""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

from .session_io import Session, raise_on_sigterm, run_phase

# name: (result file, seconds kept for it on a GPU, on a dry run). A phase may run until the time kept for the
# later phases; on a GPU the column adds up to the limit, so a phase gets its own share plus what earlier
# phases left. A dry run has no timing target: a phase there may use all but 10 s per later phase.
PHASES = {
    "env": ("env.json", 20, 10),
    "build": ("build.json", 90, 10),
    "check": ("correctness.json", 90, 10),
    "pytest": (None, 110, 10),  # writes pytest.xml itself
    "sweep": ("sweep.json", 50, 10),
    "bench": (None, 120, 10),  # python -m bench writes bench.json itself
    "ncu": ("ncu.json", 30, 10),
}
GPU_LIMIT_S, DRY_LIMIT_S, PHASE_LIMIT_S = 510, 175, 175  # 9 and 3 minutes, less the start-up
GRACE_S = 15  # after SIGTERM, a phase has this long to write its file


def _env(session, f):
    import torch
    from . import common
    dev = torch.device("cpu" if session.dry_run else "cuda")
    f.set(env=common.environment(dev))
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm",
                          "--format=csv"], capture_output=True, text=True) if not session.dry_run else None
    f.add({"what": "nvidia-smi", "status": "ok" if smi and smi.returncode == 0 else "not run (dry run)",
           "text": smi.stdout if smi else ""})
    f.add({"what": "copy bandwidth", "gbs": common.measure_copy_bandwidth(dev, 16 if session.dry_run else None),
           "status": "ok"})
    f.add({"what": "matmul", **_matmul_rate(dev, session.dry_run), "status": "ok"})
    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True) if _which("nvcc") else None
    f.add({"what": "nvcc", "status": "ok" if nvcc else "not found", "text": nvcc.stdout[-200:] if nvcc else ""})


def _which(name):
    import shutil
    return shutil.which(name)


def _matmul_rate(dev, dry_run):
    """bf16 (fp32 on the CPU) matrix product rate on random data, TFLOP/s."""
    import torch
    from . import common
    n = 256 if dry_run else 8192
    dtype = torch.float32 if dry_run else torch.bfloat16
    a, b = (torch.randn(n, n, device=dev).to(dtype) for _ in range(2))
    t = common.time_fn(lambda: a @ b, dev, rep_ms=50 if dry_run else 200, warmup_ms=10)
    return {"n": n, "dtype": str(dtype)[6:], "tflops": 2 * n**3 / (t.median_ms * 1e-3) / 1e12, "median_ms": t.median_ms}


def _bench(session, f):
    from .__main__ import main
    # bench.json alone: $OUT holds at most 8 files (python -m bench.compare bench.json prints bench.md's tables)
    args = ["--out", str(session.out), "--stem", "bench", "--no-md", "--budget", str(max(int(session.left()) - 10, 20))]
    if session.dry_run:
        args += ["--device", "cpu", "--smoke", "--ops", "scdown,e2e", "--threads", "1"]
    else:
        # the build phase compiled the kernel variants already (bench/warm.py)
        args += ["--device", "cuda", "--quick", "--compile-mode", "max-autotune", "--scales", "n,s", "--no-warmup"]
    session.log(f"  python -m bench {' '.join(args)}")
    main(args)
    rows = json.loads((session.out / "bench.json").read_text())["rows"]
    for r in rows:
        f.add({k: r.get(k) for k in ("op", "mode", "impl", "case", "status", "median_ms", "images_per_s")})


def _body(name):
    if name == "env":
        return _env
    if name == "bench":
        return _bench
    from . import gpu_check, gpu_tests, sol, sweep, warm
    return {"build": warm.run, "check": gpu_check.run, "pytest": gpu_tests.run, "sweep": sweep.run,
            "ncu": sol.run}[name]


def run_one(name, out, dry_run, deadline):
    """In the phase's own process."""
    raise_on_sigterm()
    session = Session(out, dry_run, deadline)
    return run_phase(session, name, PHASES[name][0], _body(name))


def _spawn(name, args, budget):
    """Run one phase in a child process; at its budget SIGTERM, then SIGKILL after GRACE_S."""
    cmd = [sys.executable, "-m", "bench.gpu_session", "--out", args.out, "--run-phase", name,
           "--deadline", str(time.time() + budget)] + (["--dry-run"] if args.dry_run else [])
    child = subprocess.Popen(cmd)
    try:
        return child.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGTERM)
        try:
            return child.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()
            return "killed"
    finally:
        if child.poll() is None:  # the driver itself was interrupted: pass it on, then stop
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=GRACE_S)


def drive(args):
    session = Session(args.out, args.dry_run, 0)
    limit = args.limit_s or (PHASE_LIMIT_S if args.phase else DRY_LIMIT_S if args.dry_run else GPU_LIMIT_S)
    t_end = time.time() + limit
    names = [args.phase] if args.phase else list(PHASES)
    session.log(f"gpu_session: phases {names}, {'dry run, ' if args.dry_run else ''}limit {limit}s, out {args.out}")
    summary = {}
    for i, name in enumerate(names):
        later = sum(PHASES[n][2 if args.dry_run else 1] for n in names[i + 1:])
        budget = max(t_end - time.time() - later, 5)
        t0 = time.time()
        rc = _spawn(name, args, budget)
        summary[name] = {"rc": rc, "wall_s": round(time.time() - t0, 1), "budget_s": round(budget, 1)}
        session.log(f"gpu_session: {name} rc {rc} in {summary[name]['wall_s']}s (budget {budget:.0f}s)")
    session.log("gpu_session: done " + json.dumps(summary))
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.gpu_session", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_out"), help="result folder (default $OUT)")
    p.add_argument("--dry-run", action="store_true", help="every phase on the CPU at tiny sizes")
    p.add_argument("--phase", choices=list(PHASES), help="run this phase alone")
    p.add_argument("--limit-s", type=float, default=None, help="wall limit of the whole run")
    p.add_argument("--run-phase", choices=list(PHASES), help=argparse.SUPPRESS)  # the driver's children
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.run_phase:
        status = run_one(args.run_phase, args.out, args.dry_run, args.deadline)
        return 0 if status == "ok" else 1
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
