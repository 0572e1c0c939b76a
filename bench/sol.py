"""Speed-of-light phase of the GPU session: the five kernels with the most device time over one run of the
target cases (ours, torch.profiler), then Nsight Compute's SpeedOfLight section for each of them (ncu.json).
ncu reads hardware counters on Firecracker machines, not on gVisor; where it cannot, the reason is recorded.

    python -m bench.sol --target     the workload ncu profiles (the target cases, once each)"""
import csv
import io
import os
import re
import shutil
import subprocess
import sys

TOP = 5


def _target_run():
    from . import gpu_check, warm
    for case in gpu_check.target_cases(False):
        warm.run_case(case)


def heaviest_kernels(n=TOP):
    """[(kernel name, total device ms, calls)] of the n kernels with the most device time."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    _target_run()  # compile and autotune outside the profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        _target_run()
        torch.cuda.synchronize()
    total = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t:
            total[e.key] = (t / 1e3, e.count)
    ranked = sorted(total.items(), key=lambda kv: -kv[1][0])[:n]
    return [(k, ms, calls) for k, (ms, calls) in ranked]


def ncu_command(kernels):
    names = "|".join(re.escape(k.split("(")[0]) for k in kernels) or "none"
    return ["ncu", "--clock-control", "none", "--section", "SpeedOfLight", "--csv", "--kernel-name",
            f"regex:^({names})", "--launch-count", str(2 * TOP), sys.executable, "-m", "bench.sol", "--target"]


def parse_csv(text):
    """ncu --csv rows -> {kernel: {metric (unit): value}} (first launch of each kernel)."""
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    out = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        k = row.get("Kernel Name", "?")
        launch = out.setdefault(k, {"id": row.get("ID")})
        if launch["id"] == row.get("ID"):
            launch[f"{row.get('Metric Name')} ({row.get('Metric Unit')})"] = row.get("Metric Value")
    return out


def _why_not():
    import torch
    if not torch.cuda.is_available():
        return "no CUDA device"
    if shutil.which("ncu") is None:
        return "ncu not found"
    return None


def run(session, f):
    why = "dry run (CPU)" if session.dry_run else _why_not()
    if why:
        f.add({"what": "ncu", "status": f"not available: {why}",
               "command": " ".join(ncu_command(["<the five heaviest kernels>"]))})
        return
    ranked = heaviest_kernels()
    f.set(heaviest=[{"kernel": k, "device_ms": ms, "calls": c} for k, ms, c in ranked])
    cmd = ncu_command([k for k, _, _ in ranked])
    session.log(f"  {' '.join(cmd)}")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(session.left(), 5),
                           env=dict(os.environ, PYTHONUNBUFFERED="1"))
    except subprocess.TimeoutExpired as e:
        f.add({"what": "ncu", "status": "skipped: phase time budget", "stderr": str(e.stderr or "")[-2000:]})
        return
    sol = parse_csv(r.stdout)
    status = "ok" if sol else f"not available: ncu rc {r.returncode}, no counters read"
    f.add({"what": "ncu", "status": status, "command": " ".join(cmd), "speed_of_light": sol,
           "stderr": r.stderr[-3000:]})


if __name__ == "__main__":
    if sys.argv[1:] == ["--target"]:
        _target_run()
    else:
        sys.exit(__doc__)
