"""The GPU-readiness budgets (issue: static evidence), enforced on the committed static report
(bench/results/static-<date>.json, `python -m bench.static`) and, where cheap, recounted live:
- the report was made from the kernel sources as they are (a kernel edit without a new report fails here);
- no launchable bf16/fp16 config spills registers; every config a launcher or autotuner may launch (after
  pruning) compiles for sm_90a and fits 227 KB of shared memory, fp32 training included;
- each fused op's host ops for forward + backward are at most the eager reference's, and so are the accelerated
  yolov10n train step's (recounted live at yolov10n and compared with the report);
- a new batch size, an image size within a bucket or a rectangular validation batch neither recompiles nor
  re-tunes (the launches' compile variants and autotune keys are the same)."""
import json
import os
import subprocess
import sys

import pytest

from bench import static
from bench.static_table import latest

SMEM_LIMIT = 227 * 1024
REPORT = latest(os.path.join(static.ROOT, "bench", "results"))


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
    assert {r["shape"].split()[1] for r in REPORT["rows"]} == {f"yolov10{s}" for s in static.SCALES}
    assert {r["dtype"] for r in REPORT["rows"]} == set(static.DTYPES)


def test_no_low_precision_config_spills():
    spilling = [(r["kernel"], r["dtype"], r["shape"], r["config"], r["spill_bytes"]) for r in REPORT["rows"]
                if r["dtype"] in ("bfloat16", "float16") and r.get("launchable") and r.get("spill_bytes")]
    assert not spilling, spilling[:10]


def test_every_config_compiles_fits_shared_memory_and_launches():
    """Configs are pruned before launch (never left to fail at tuning): every recorded one must be launchable;
    fp32 training included."""
    bad = [(r["kernel"], r["dtype"], r["shape"], r["config"], r.get("smem_bytes"), r.get("error", "")[:200])
           for r in REPORT["rows"] if not r.get("launchable") or "error" in r or r["smem_bytes"] > SMEM_LIMIT]
    assert not bad, bad[:10]
    fp32_train = [r for r in REPORT["rows"] if r["dtype"] == "float32" and r["shape"].endswith("train")]
    assert fp32_train and all(r["launchable"] for r in fp32_train)


def test_host_ops_per_op_at_most_eager_in_the_report():
    over = [(o["op"], o["scale"], o["mode"], o["host_ops_ours"], o["host_ops_eager"]) for o in REPORT["ops"]
            if o["host_ops_ours"] > o["host_ops_eager"]]
    assert not over, over
    step = REPORT["model_step"]
    assert step["ours"]["host_ops"] <= step["eager"]["host_ops"], step


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
import json, torch
from bench.static_capture import Recorder, capture_op
from yolov10_kernels.warmup import variant_key
out = {}
for op in ("cib", "scdown", "cls_head", "psa"):
    for train, cases in ((True, [(64, 640), (32, 640), (7, 640)]),
                         (False, [(1, 640), (1, 608), (1, (640, 480)), (2, 640)])):
        for batch, imgsz in cases:
            rec = Recorder()
            capture_op(rec, op, "n", batch, torch.bfloat16, train, imgsz=imgsz)
            keys = sorted({json.dumps(variant_key(ln, c), default=str) for ln in rec.launches for c in ln.configs})
            tune = sorted({json.dumps(ln.key, default=str) for ln in rec.launches if ln.tuned})
            out.setdefault(f"{op} {'train' if train else 'eval'}", []).append([str((batch, imgsz)), keys, tune])
print(json.dumps(out))
"""


def test_no_recompile_or_retune_for_new_batch_or_image_size():
    """Train: batch 64, 32 and 7 at 640 px; eval: 640, 608 and 640x480 (rectangular validation) at batch 1 and
    batch 2: the same compile variants (Triton's specialisation of every argument, constexprs, configs) and the
    same autotune keys."""
    for what, cases in _subprocess(_SHAPES).items():
        (base, keys, tune), *rest = cases
        for shape, k, t in rest:
            assert k == keys, f"{what}: {shape} compiles variants that {base} does not"
            assert t == tune, f"{what}: {shape} re-tunes (autotune keys {t} vs {tune})"


_REPRODUCE = """
import json, sys
from bench import static
from bench.static_compile import compile_variant, worker_init
want = json.loads(sys.argv[1])
worker_init()
jobs, _ = static.jobs_and_rows(static.capture((want["scale"],), (want["dtype"],), lambda m: None), quick=False)
for key, module, k, args, consts, cfg in jobs:
    if k == want["kernel"] and cfg == want["config"] and consts == want["constexprs"]:
        print(json.dumps(compile_variant(module, k, args, consts, cfg)))
        break
"""


@pytest.mark.parametrize("kernel", ["_dw_fwd_kernel", "_pw_dw_kernel"])
def test_report_rows_reproduce(kernel):
    """Recompile a sample of the report's configs for sm_90a (a launcher's choice, an autotuner's): the same
    registers, spills, shared memory and MMA kind as the committed report says."""
    row = next(r for r in REPORT["rows"] if r["kernel"] == kernel and r["dtype"] == "bfloat16")
    want = {k: row[k] for k in ("kernel", "dtype", "config", "constexprs")}
    got = _subprocess(_REPRODUCE, json.dumps({**want, "scale": row["shape"].split()[1][-1]}))
    for f in ("regs", "spill_bytes", "smem_bytes", "mma"):
        assert got[f] == row[f], (f, got[f], row[f])
