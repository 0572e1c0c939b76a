"""Task-aligned assignment benchmark: reference (yolov10.assign.TaskAlignedAssigner, dense (B, M, A) tensors)
against ours (torch.ops.yolov10_kernels.task_aligned_assign through FusedTaskAlignedAssigner), side by side,
for the one-to-many (topk 10) and one-to-one (topk 1) assigners of YOLOv10.

    run(device, quick=False) -> list of row dicts;  python -m bench.assign [--device cpu|cuda] [--quick]

Shapes: 640 px, A = 8400 anchors, nc = 80; CPU (2 threads): B = 8, M in {20, 100, 300} plus M = 2000 (ours
only: the reference would need several GB); CUDA: B = 16, M in {100, 300, 1000}. Inputs: every image holds
between M/2 and M boxes (padded to M as the loss does), predictions are jittered copies of the gts (a
mid-training model), scores uniform.

Timing: bench/common.py's timers: on the CPU a host timer (perf_counter) over a fixed number of calls after one
warm-up call, median / p20 / p80; on CUDA triton's do_bench (CUDA events when triton is missing).

Extra memory = peak of the bytes allocated during the call minus the outputs still alive at that moment (the
inputs exist before the call and are not counted):
 - CPU: torch's profiler with profile_memory=True records every allocation and free of the c10 CPU allocator
   with its address and size; replaying them in order gives the live bytes at each moment, and allocations
   whose address holds a returned tensor at the end are the outputs. All the op's scratch goes through that
   allocator (at::empty), like every tensor of the reference; untracked are only std:: containers (the
   reference's topk queue, our K-element heap: a few KB).
 - CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus the memory allocated before
   the call and minus the outputs' bytes. The reference allocates its outputs last, so for it this
   underestimates the extra memory (conservative for the ratio).
Each "ours" row checks its outputs against the reference's where both ran (`flips`: anchors assigned
differently; `max_score_diff`). CPU "ours" rows also give `median_ms_1thread`: with 2 threads on cores shared
with other work, a parallel region can wait a scheduler slice for its second thread.
"""
import argparse
import json
import os
import sys
import tempfile

import torch

from .common import NotAvailable, time_cpu, time_cuda

CPU_THREADS = 2
TARGET_SPEEDUP = {"cpu": 10.0, "cuda": 20.0}
TARGET_MEM_RATIO = 20.0
OP_BACKEND = {"cpu": "cpp", "cuda": "cuda"}  # FusedTaskAlignedAssigner backend that runs only the fused op
M2000_LIMIT_S = 2.0


def anchors(img=640, strides=(8, 16, 32), device="cpu"):
    pts = []
    for s in strides:
        n = img // s
        c = (torch.arange(n, dtype=torch.float32) + 0.5) * s
        y, x = torch.meshgrid(c, c, indexing="ij")
        pts.append(torch.stack((x, y), -1).view(-1, 2))
    return torch.cat(pts).to(device)


def make_inputs(B, M, nc=80, img=640, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    ap = anchors(img)
    A = ap.shape[0]
    n_img = torch.randint(max(M // 2, 1), M + 1, (B,), generator=g)
    mask = (torch.arange(M)[None] < n_img[:, None]).float()[..., None]
    gc = torch.rand(B, M, 2, generator=g) * img
    gwh = torch.rand(B, M, 2, generator=g) * img / 5 + 6
    gt = torch.cat([gc - gwh / 2, gc + gwh / 2], -1).clamp(0, img) * mask
    lab = torch.randint(0, nc, (B, M, 1), generator=g).float() * mask
    pick = (torch.rand(B, A, generator=g) * n_img[:, None]).long()
    pd = torch.gather(gt, 1, pick[..., None].expand(-1, -1, 4)) + torch.randn(B, A, 4, generator=g) * 8
    scores = torch.rand(B, A, nc, generator=g)
    return [t.to(device) for t in (scores, pd, ap, lab, gt, mask)]


# ---------------------------------------------------------------------------------------------- measuring
def _storages(outs):
    return {t.untyped_storage().data_ptr() for t in outs if isinstance(t, torch.Tensor) and t.numel()}


def _cpu_peak_extra_mb(fn):
    """(peak extra MiB, outputs) from the profiler's allocation events (see the module docstring)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    mem = sorted((e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0),
                 key=lambda e: e["ts"])
    out_ptrs = _storages(out)
    # last allocation event at each address that is still alive at the end
    live = {}
    for i, e in enumerate(mem):
        a, n = e["args"]["Addr"], e["args"]["Bytes"]
        if n > 0:
            live[a] = (i, n)
        else:
            live.pop(a, None)
    out_events = {i for a, (i, _) in live.items() if a in out_ptrs}
    cur = peak = 0
    for i, e in enumerate(mem):
        if i not in out_events:
            cur += e["args"]["Bytes"]
            peak = max(peak, cur)
    return peak / 2**20, out


def _cuda_peak_extra_mb(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    out_bytes = sum(t.untyped_storage().nbytes() for t in out if isinstance(t, torch.Tensor))
    return max(peak - out_bytes, 0) / 2**20, out


def _check(ref, ours):
    flips = int(((ref[3] != ours[3]) | (ref[4] != ours[4])).sum())
    same = all(torch.equal(ref[i], ours[i]) for i in (0, 1, 3, 4))
    diff = (ref[2].float() - ours[2].float()).abs().max().item()
    return flips, same, diff


# ----------------------------------------------------------------------------------------------------- run
def run(device, quick=False):
    """Rows {"op", "mode", "impl", "case", "shape", "dtype", "device", "median_ms", "p20_ms", "p80_ms",
    "peak_extra_mb", ...}; "ours" rows also carry speedup / mem_ratio / correctness against the reference
    and the issue's target for that row (target, target_measured, target_met)."""
    from yolov10.assign import TaskAlignedAssigner
    from yolov10_kernels import FusedTaskAlignedAssigner

    device = torch.device(device)
    dev = device.type
    ok, how = op_status(dev)
    if dev == "cuda":
        B, Ms, extra_ms = 16, ([100, 300] if quick else [100, 300, 1000]), []
    else:
        B, Ms, extra_ms = 8, ([20, 100] if quick else [20, 100, 300]), ([] if quick else [2000])
    old_threads = torch.get_num_threads()
    if dev == "cpu":
        torch.set_num_threads(CPU_THREADS)
    rows = []
    try:
        for op, topk in (("assign_o2m", 10), ("assign_o2o", 1)):
            for M in Ms + extra_ms:
                x = make_inputs(B, M, device=device, seed=M)
                A, nc = x[0].shape[1], x[0].shape[2]
                base = {"op": op, "mode": "fwd", "case": f"B={B} M={M}", "shape": f"B={B} A={A} M={M} nc={nc}",
                        "dtype": "float32", "device": dev, "topk": topk, "batch": B, "n_gt": M}
                if dev == "cpu":
                    base["threads"] = torch.get_num_threads()
                ref_mod = TaskAlignedAssigner(topk=topk, num_classes=nc, alpha=0.5, beta=6.0)
                ours_mod = FusedTaskAlignedAssigner(topk=topk, num_classes=nc, alpha=0.5, beta=6.0,
                                                    backend=OP_BACKEND[dev])
                ref_row, ref_out = None, None
                if M in Ms:
                    ref_row, ref_out = _measure(lambda: ref_mod(*x), dev, reps=3 if quick else 5)
                    rows.append({**base, "impl": "reference", "status": "ok", **ref_row})
                else:
                    rows.append({**base, "impl": "reference", "status": "skipped: the reference's (B, M, A) "
                                 "tensors at this M take several GB and minutes here"})
                if not ok:
                    rows.append({**base, "impl": "ours", "status": f"not available: {how}"})
                    continue
                row, out = _measure(lambda: ours_mod(*x), dev, reps=10 if quick else 20)
                row["backend"] = how
                if dev == "cpu":  # context: 2 threads on cores shared with other work wait at every barrier
                    torch.set_num_threads(1)
                    row["median_ms_1thread"] = _timer(lambda: ours_mod(*x), dev, 10 if quick else 20).median_ms
                    torch.set_num_threads(CPU_THREADS)
                if ref_out is not None:
                    row["flips"], row["identical"], row["max_score_diff"] = _check(ref_out, out)
                    row["speedup"] = ref_row["median_ms"] / row["median_ms"]
                    row["mem_ratio"] = ref_row["peak_extra_mb"] / max(row["peak_extra_mb"], 1e-9)
                    tgt = TARGET_SPEEDUP[dev]
                    row["target"] = (f"{op} {dev} {base['case']}: >= {tgt:.0f}x faster, <= 1/{TARGET_MEM_RATIO:.0f} "
                                     f"extra memory, 0 flips")
                    row["target_measured"] = (f"{row['speedup']:.1f}x, 1/{row['mem_ratio']:.0f} "
                                              f"({row['peak_extra_mb']:.2f} vs {ref_row['peak_extra_mb']:.0f} MiB), "
                                              f"{row['flips']} flips")
                    row["target_met"] = bool(row["speedup"] >= tgt and row["mem_ratio"] >= TARGET_MEM_RATIO
                                             and row["flips"] == 0)
                elif dev == "cpu" and M == 2000:
                    row["target"] = f"{op} cpu {base['case']}: < {M2000_LIMIT_S:.0f} s"
                    row["target_measured"] = f"{row['median_ms'] / 1e3:.3f} s"
                    row["target_met"] = row["median_ms"] < M2000_LIMIT_S * 1e3
                rows.append({**base, "impl": "ours", "status": "ok", **row})
                del x, ref_out
    finally:
        torch.set_num_threads(old_threads)
    return rows


def op_status(dev):
    """(usable, how or why) of the fused op for `dev` tensors; the first call loads (or JIT-builds) it."""
    import yolov10_kernels
    x = make_inputs(1, 2, nc=4, img=64, seed=0, device=dev)
    try:
        yolov10_kernels.FusedTaskAlignedAssigner(topk=1, num_classes=4, backend=OP_BACKEND[dev])(*x)
    except (RuntimeError, NotAvailable) as e:
        return False, str(e)
    return True, yolov10_kernels.available()[OP_BACKEND[dev]][1]


def _timer(fn, dev, reps):
    if dev == "cuda":
        return time_cuda(fn, rep_ms=200.0, warmup_ms=25.0)
    return time_cpu(fn, rep_ms=0.0, warmup_ms=0.0, min_reps=reps, max_reps=reps)


def _measure(fn, dev, reps):
    t = _timer(fn, dev, reps)
    mem, out = (_cuda_peak_extra_mb if dev == "cuda" else _cpu_peak_extra_mb)(fn)
    return {"median_ms": t.median_ms, "p20_ms": t.p20_ms, "p80_ms": t.p80_ms, "timer": t.timer,
            "peak_extra_mb": mem}, out


def table(rows):
    cols = ["op", "case", "impl", "median_ms", "p20_ms", "p80_ms", "median_ms_1thread", "peak_extra_mb", "speedup",
            "mem_ratio", "flips", "status"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, float):
                v = f"{v:.3f}" if c == "peak_extra_mb" and v < 10 else f"{v:.1f}"
            vals.append("-" if v is None else str(v))
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def cli(argv, prog, description, run_fn, quick_help):
    """The command line of an assignment benchmark module: run_fn(device, quick) -> rows, printed as a table with
    each row's target verdict, optionally saved as JSON."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    rows = run_fn(args.device, quick=args.quick)
    print(table(rows))
    for r in rows:
        if r.get("target"):
            print(f"{'MET ' if r['target_met'] else 'MISS'} {r['target']}: {r['target_measured']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def main(argv=None):
    return cli(argv, "python -m bench.assign", __doc__.split("\n\n")[0], run, "fewer shapes and repetitions")


if __name__ == "__main__":
    sys.exit(main())
