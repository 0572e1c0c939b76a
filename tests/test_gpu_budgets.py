"""The GPU-readiness budgets (issue: static evidence), enforced on the committed static report
(bench/results/static-<date>.json, `python -m bench.static`) and, where cheap, recounted live:
- the report was made from the kernel sources as they are (a kernel edit without a new report fails here);
- per GPU profile (yolov10_kernels.gpus.PROFILES, each compiled for its own target): every launch is launchable,
  i.e. every config a launcher or autotuner may launch there (after pruning) compiles and fits the profile's
  shared memory and registers, fp32 training included; no launchable config spills registers;
- each fused op's host ops for forward + backward are at most the eager reference's, and so are the accelerated
  yolov10n train step's (recounted live at yolov10n and compared with the report);
- a new batch size, an image size within a bucket or a rectangular validation batch neither recompiles nor
  re-tunes (the launches' compile variants and autotune keys are the same), on a 227 KB GPU and a 99 KB one."""
import json
import os
import subprocess
import sys

import pytest

from bench import static
from bench.static_table import latest

from yolov10_kernels import gpus

REPORT = latest(os.path.join(static.ROOT, "bench", "results"))


def _rows(gpu):
    rows = [r for r in REPORT["rows"] if r["gpu"] == gpu]
    assert rows, f"the static report has no rows for {gpu}: run python -m bench.static"
    return rows


def _subprocess(code, *args, timeout=600):
    """Run code in a process without the Triton interpreter (the launchers choose GPU configs); its last stdout
    line, as JSON."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-c", code, *args], cwd=static.ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_report_is_committed_and_matches_the_kernel_sources():
    assert REPORT is not None, "no bench/results/static-*.json: run python -m bench.static"
    env = REPORT["env"]
    assert not env["quick"], "the committed report must be a full run (python -m bench.static)"
    assert env["sources_sha256"] == static.sources_hash(), (
        "the kernel sources changed since the committed static report: run python -m bench.static and commit it")
    assert set(env["profiles"]) == set(gpus.PROFILES), "the report must cover every GPU profile"
    for name, p in gpus.PROFILES.items():
        assert env["profiles"][name] == json.loads(json.dumps(p.limits())), f"{name}'s limits changed: rerun"
        rows = _rows(name)
        assert {r["target"] for r in rows} == {p.target}
        assert {r["shape"].split()[1] for r in rows} == {f"yolov10{s}" for s in static.SCALES}
        # bf16 launches nothing where the GPU has no bf16 tensor cores (the drop-ins run the reference there)
        assert {r["dtype"] for r in rows} == set(static.DTYPES) - (set() if p.bf16 else {"bfloat16"}), name


@pytest.mark.parametrize("gpu", list(gpus.PROFILES))
def test_no_launchable_config_spills(gpu):
    """0 register spills in every config a launch may run with, on every profile (ptxas's spill stores + loads)."""
    worst = {}
    for r in _rows(gpu):
        if r.get("launchable") and r.get("spill_bytes"):
            worst[r["kernel"]] = max(worst.get(r["kernel"], 0), r["spill_bytes"])
    assert not worst, f"{gpu}: configs spill registers (kernel: worst bytes per thread): {worst}"


@pytest.mark.parametrize("gpu", list(gpus.PROFILES))
def test_every_config_compiles_fits_shared_memory_and_launches(gpu):
    """Configs are pruned before launch (never left to fail at tuning): every recorded one must be launchable on
    the profile it was captured for (its shared memory and registers within the profile's), fp32 training
    included; the per-profile launch counts agree."""
    p = gpus.PROFILES[gpu]
    rows = _rows(gpu)
    bad = [(r["kernel"], r["dtype"], r["shape"], r["config"], r.get("smem_bytes"), r.get("error", "")[:200])
           for r in rows if not r.get("launchable") or "error" in r or r["smem_bytes"] > p.smem_per_block
           or r["regs"] > p.max_regs_per_thread]
    assert not bad, bad[:10]
    fp32_train = [r for r in rows if r["dtype"] == "float32" and r["shape"].endswith("train")]
    assert fp32_train and all(r["launchable"] for r in fp32_train)
    summary = REPORT["gpus"][gpu]
    assert summary["launches"] == summary["launchable"] == len({r["launch"] for r in rows}), summary


# Iterations of the longest runtime loop of one program of a merge (a kernel that walks the per-program partial rows
# other launches wrote: each row waits on the previous one, so walking all 3,200 partial rows of a pointwise layer
# at 80x80 costs about a millisecond of pure latency): the merges are trees (ops/utils.MERGE_ROWS) and stay within a
# few hundred rows at the batch-64 shapes. The other kernels' loops are their share of the work (tiles of dots over
# the rows a program owns, more of them on a GPU with fewer SMs); the report records those too.
LOOP_BUDGET = 512
MERGE_KERNELS = ("_merge_stats_kernel", "_sum_partials_kernel", "_psa_sums_kernel")


def loop_budget_violations(report):
    """[(kernel, gpu, shape, iterations)] of merges over the budget, and the loops whose trip count is not
    known."""
    rows = report["rows"]
    assert all("longest_loop" in r for r in rows), "the report has no longest_loop per row: run python -m bench.static"
    unknown = sorted({u for r in rows for u in r["unknown_loops"]})
    over = sorted({(r["kernel"], r["gpu"], r["shape"], r["longest_loop"]) for r in rows
                   if r["kernel"] in MERGE_KERNELS and r["longest_loop"] > LOOP_BUDGET})
    return over, unknown


def test_longest_dependent_loop_within_budget():
    over, unknown = loop_budget_violations(REPORT)
    assert not unknown, f"loops whose trip count bench/static_loops.py cannot tell: {unknown}"
    assert not over, over[:10]


def test_host_ops_per_op_at_most_eager_in_the_report():
    over = [(o["op"], o["scale"], o["mode"], o["host_ops_ours"], o["host_ops_eager"]) for o in REPORT["ops"]
            if o["host_ops_ours"] > o["host_ops_eager"]]
    assert not over, over
    step = REPORT["model_step"]
    assert step["ours"]["host_ops"] <= step["eager"]["host_ops"], step


def test_saved_for_backward_per_model_at_most_eager_in_the_report():
    """The report's "memory" rows (bench/static_memory.py) cover yolov10n/s, yolo11n/s and yolo26n/s at batch 16,
    640 px, AMP; per model the drop-ins save for backward at most what the modules they replace save, in total and
    per fused module kind, the rest of the model the same on both sides, with at most eager's host ops."""
    from bench.static_memory import MODELS
    rows = {r["model"]: r for r in REPORT.get("memory", [])}
    assert set(rows) == set(MODELS), f"memory rows for {sorted(rows)}, not {MODELS}: run python -m bench.static"
    for name, r in rows.items():
        assert (r["batch"], r["imgsz"], r["amp"]) == (16, 640, "float16"), name
        eager, ours = r["eager"]["saved_bytes"], r["ours"]["saved_bytes"]
        assert r["fused_modules"] and ours["by_kind"]["other"] == eager["by_kind"]["other"], name
        over = [k for k in r["fused_modules"] if ours["by_kind"].get(k, 0) > eager["by_kind"].get(k, 0)]
        assert not over and ours["total"] <= eager["total"], (name, over, ours, eager)
        assert r["ours"]["host_ops"] <= r["eager"]["host_ops"], (name, r["ours"]["host_ops"], r["eager"]["host_ops"])


_COUNT = """
import json
from bench import static_ops
out = {}
for op in ("cib", "scdown", "cls_head", "psa", "psa.attn"):
    for train in (False, True):
        c = static_ops.count_op(op, "n", train, 64 if train else 1)
        out[f"{op} {'train' if train else 'eval'}"] = [c["ours"]["host_ops"], c["eager"]["host_ops"]]
step = static_ops.count_model_step("n", 2, 640)
out["step"] = [step["ours"]["host_ops"], step["eager"]["host_ops"]]
print(json.dumps(out))
"""


def test_host_ops_recounted_live_at_most_eager_and_as_reported():
    """The same counts, made now (drop-ins, autograd and the loss are outside the kernel sources the report's
    hash covers): at most eager's, and equal to the committed report's."""
    live = _subprocess(_COUNT)
    reported = {f"{o['op']} {o['mode']}": [o["host_ops_ours"], o["host_ops_eager"]] for o in REPORT["ops"]
                if o["scale"] == "n"}
    reported["step"] = [REPORT["model_step"]["ours"]["host_ops"], REPORT["model_step"]["eager"]["host_ops"]]
    for what, (ours, eager) in live.items():
        assert ours <= eager, f"{what}: {ours} host ops vs eager {eager}"
    assert live == reported, "host-op counts changed since the report: run python -m bench.static"


_SHAPES = """
import json, sys, torch
from bench.static_capture import Recorder, capture_op
from yolov10_kernels.warmup import variant_key
out = {}
for op in ("cib", "scdown", "cls_head", "psa"):
    for train, cases in ((True, [(64, 640), (32, 640), (7, 640)]),
                         (False, [(1, 640), (1, 608), (1, (640, 480)), (2, 640)])):
        for batch, imgsz in cases:
            rec = Recorder()
            capture_op(rec, op, "n", batch, torch.bfloat16, train, imgsz=imgsz, gpu=sys.argv[1])
            keys = sorted({json.dumps(variant_key(ln, c), default=str) for ln in rec.launches for c in ln.configs})
            tune = sorted({json.dumps(ln.key, default=str) for ln in rec.launches if ln.tuned})
            out.setdefault(f"{op} {'train' if train else 'eval'}", []).append([str((batch, imgsz)), keys, tune])
print(json.dumps(out))
"""


@pytest.mark.parametrize("gpu", ["H200", "RTX3090"])
def test_no_recompile_or_retune_for_new_batch_or_image_size(gpu):
    """Train: batch 64, 32 and 7 at 640 px; eval: 640, 608 and 640x480 (rectangular validation) at batch 1 and
    batch 2: the same compile variants (Triton's specialisation of every argument, constexprs, configs) and the
    same autotune keys."""
    for what, cases in _subprocess(_SHAPES, gpu).items():
        (base, keys, tune), *rest = cases
        for shape, k, t in rest:
            assert k == keys, f"{what}: {shape} compiles variants that {base} does not"
            assert t == tune, f"{what}: {shape} re-tunes (autotune keys {t} vs {tune})"


_REPRODUCE = """
import json, sys
from bench import static
from bench.static_compile import compile_variant, worker_init
from yolov10_kernels import gpus
want = json.loads(sys.argv[1])
worker_init(gpus.resolve(want["gpu"]).arch)
launches = static.capture((want["scale"],), (want["dtype"],), lambda m: None, gpu=want["gpu"])
jobs, _ = static.jobs_and_rows(launches, False, want["gpu"])
for key, gpu, module, k, args, consts, cfg in jobs:
    if k == want["kernel"] and cfg == want["config"] and consts == want["constexprs"]:
        print(json.dumps(compile_variant(module, k, args, consts, cfg, gpu=gpu)))
        break
"""


@pytest.mark.parametrize("kernel, gpu", [("_dw_conv_kernel", "H200"), ("_pw_dw_kernel", "H200"),
                                         ("_pw_fwd_kernel", "RTX3090"), ("_pw_wgrad_kernel", "T4")])
def test_report_rows_reproduce(kernel, gpu):
    """Recompile a sample of the report's configs for their profile's target (a launcher's choice, an
    autotuner's): the same registers, spills, shared memory and MMA kind as the committed report says."""
    row = next(r for r in _rows(gpu) if r["kernel"] == kernel and r["dtype"] == "float16")
    want = {k: row[k] for k in ("kernel", "dtype", "config", "constexprs", "gpu")}
    got = _subprocess(_REPRODUCE, json.dumps({**want, "scale": row["shape"].split()[1][-1]}))
    for f in ("regs", "spill_bytes", "smem_bytes", "mma"):
        assert got[f] == row[f], (f, got[f], row[f])


_FP64 = """
import itertools, json, sys, torch
from bench.static_capture import capture_op
from bench.static_compile import compile_variant, worker_init
from yolov10_kernels import gpus
from yolov10_kernels.capture import Recorder, fake_gpu, fake_input
from yolov10_kernels.ops.pwconv import pw_conv_bn, pw_conv_bn_backward
from yolov10_kernels.warmup import variant_key
gpu = gpus.resolve(sys.argv[1])
rec = Recorder()
with fake_gpu(rec, gpu) as mode:
    for (ci, co), cl in itertools.product(((256, 256), (512, 512), (64, 512), (512, 64)), (False, True)):
        def t(*shape):
            return fake_input(mode, shape, torch.float64, cl)
        x, g, y = t(16, ci, 40, 40), t(16, co, 40, 40), t(16, co, 40, 40)
        w, s, sh, b, mean, gm, gv = t(co, ci, 1, 1), t(ci), t(ci), t(co), t(co), t(co), t(co)
        pw_conv_bn(x, w, s, sh, b, True, True)
        pw_conv_bn_backward(g, gm, gv, x, w, s, sh, y, mean, True, True, True)
# the chains' and PSA's fp64 launches at yolov10m's channel counts (the largest the tests name), eval and train
for op, train in itertools.product(("cib", "cls_head", "psa"), (False, True)):
    capture_op(rec, op, "m", 1, torch.float64, train, imgsz=320, gpu=gpu)
worker_init(gpu.arch)
out = {}
for ln in rec.launches:
    for c in ln.configs:
        key = json.dumps(variant_key(ln, c), default=str)
        if key not in out:
            out[key] = [ln.kernel, c, compile_variant(ln.module, ln.kernel, ln.args, ln.constexprs, c, gpu=gpu)]
print(json.dumps(list(out.values())))
"""


@pytest.mark.parametrize("gpu", ["T4", "RTX3090", "A100", "H200", "RTX5090"])
def test_fp64_launches_fit_at_real_channel_counts(gpu):
    """The static report covers fp16/bf16/fp32; fp64 (gradcheck, the exact references) must launch too: the pointwise
    op's training forward + backward at 256 -> 256, 512 -> 512, 64 -> 512 and 512 -> 64 channels, NCHW and
    channels_last, and the CIB, cls head and PSA drop-ins' eval and train launches at yolov10m, captured as `gpu`
    would launch them and compiled for its target: every variant compiles and fits its shared memory and registers
    (the fp64 accumulator's store conversion once overflowed 99 KB; the chains' hidden-channel tiles and PSA's
    backward tiles 64 KB and 99 KB)."""
    got = _subprocess(_FP64, gpu)
    kernels = {k for k, _, _ in got}
    assert {"_pw_fwd_kernel", "_pw_dgrad_kernel", "_pw_wgrad_kernel", "_dw_pw_pw_kernel", "_dw_pw_dw_kernel",
            "_psa_fwd_kernel", "_psa_bwd_dkdv_kernel", "_psa_bwd_dq_kernel"} <= kernels, kernels
    bad = [(k, c, {f: r.get(f) for f in ("smem_bytes", "regs", "error")}) for k, c, r in got if not r["launchable"]]
    assert not bad, f"fp64 variants that cannot launch on {gpu} ({gpus.resolve(gpu).smem_per_block} B): {bad}"
