"""ultralytics' TaskAlignedAssigner against ours (yolov10_kernels.patch_ultralytics's fused subclass), side by
side in one process, called exactly as ultralytics' v8DetectionLoss calls it (topk 10, alpha 0.5, beta 6, the
loss's input layout: (B, M, 1) float labels and mask).

    run(device, quick=False, smoke=False) -> list of row dicts;  python -m bench.ultralytics_assign [--device ...]
    python -m bench --ops ultralytics_assign      # the same rows as a section of the benchmark suite

Shapes: 640 px (A = 8400 anchors), 80 classes, B = 16, M in {20, 300, 1000} (every image holds M/2..M boxes,
padded to M as the loss does; inputs from bench/assign.py's make_inputs), plus ours alone at M = 3000 (the
reference would need tens of GB). Timing and extra memory (peak bytes allocated during the call beyond its
inputs and outputs) as in bench/assign.py. The installed ultralytics decides the semantics (8.3 or 8.4).
"""
import sys

import torch

from .assign import _check, _measure, cli, make_inputs, table

B = 16
CASES = [(20, 5), (300, 3), (1000, 1)]  # (M, timed calls of the reference)
OURS_ONLY = [3000]
SMOKE = (2, [(12, 1)], [40])  # B, CASES, OURS_ONLY for a set-up check (tests/test_bench.py)
TARGET_SPEEDUP, TARGET_MEM_RATIO = 20.0, 20.0  # at M >= 300 on the CPU


def assigners():
    """(ultralytics' class, ours) as v8DetectionLoss builds them for the one-to-many assignment, and the
    installed ultralytics version."""
    from yolov10_kernels.integrations.ultralytics import assigner_pair, ultralytics_version
    version = ultralytics_version()
    kw = dict(topk=10, num_classes=80, alpha=0.5, beta=6.0)
    if version[:2] >= (8, 4):
        kw["stride"] = [8.0, 16.0, 32.0]
    return (*assigner_pair(**kw), ".".join(map(str, version)))


def _row(impl, B, M, dev, meas, **extra):
    return {"op": "ultralytics_assign", "mode": "o2m", "impl": impl, "case": f"B={B} M={M}",
            "shape": [B, 8400, M], "dtype": "float32", "device": dev, "status": "ok", **meas, **extra}


def run(device, quick=False, smoke=False):
    """Rows for ultralytics' assigner ("ultralytics") and ours ("ours"), the latter with speedup / mem_ratio /
    correctness against the former and, at M >= 300, the issue's CPU target. smoke: B = 2, M = 12 and 40."""
    ref, ours, version = assigners()
    batch, cases, ours_only = SMOKE if smoke else (B, CASES[:2] if quick else CASES, [] if quick else OURS_ONLY)
    rows = []
    for M, reps in cases:
        x = make_inputs(batch, M, device=device)
        r_meas, r_out = _measure(lambda: ref(*x), device, reps)
        rows.append(_row("ultralytics", batch, M, device, r_meas, version=version))
        o_meas, o_out = _measure(lambda: ours(*x), device, max(reps, 5))
        flips, same, diff = _check(r_out, o_out)
        row = _row("ours", batch, M, device, o_meas, flips=flips, identical=same, max_score_diff=diff,
                   speedup=r_meas["median_ms"] / o_meas["median_ms"],
                   mem_ratio=r_meas["peak_extra_mb"] / max(o_meas["peak_extra_mb"], 1e-9))
        if device == "cpu" and M >= 300:
            row.update(target=f"{row['case']}: >= {TARGET_SPEEDUP:.0f}x faster and <= 1/{TARGET_MEM_RATIO:.0f} extra memory",
                       target_measured=f"{row['speedup']:.1f}x, 1/{row['mem_ratio']:.0f}",
                       target_met=row["speedup"] >= TARGET_SPEEDUP and row["mem_ratio"] >= TARGET_MEM_RATIO)
        rows.append(row)
        del r_out, o_out
    for M in ours_only:
        x = make_inputs(batch, M, device=device)
        meas, _ = _measure(lambda: ours(*x), device, 5)
        rows.append(_row("ours", batch, M, device, meas, status="ok (ultralytics' assigner not run: tens of GB)"))
    return rows


def main(argv=None):
    return cli(argv, "python -m bench.ultralytics_assign", __doc__.split("\n\n")[0], run, "M in {20, 300} only")


if __name__ == "__main__":
    sys.exit(main())
