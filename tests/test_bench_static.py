"""python -m bench.static's harness: a kernel the drop-ins launch compiles for sm_90a on this CPU machine and
ptxas reports its resources. (Checks on a committed full report come with that report.)"""
import json
import os
import subprocess
import sys

from bench import static

_HARNESS = """
import os, json, torch
os.environ.pop("TRITON_INTERPRET", None)
from bench.static_capture import Recorder, capture_op
from bench.static_compile import compile_variant, worker_init
worker_init()
rec = Recorder()
capture_op(rec, "scdown", "tiny", 1, torch.bfloat16, False)
ln = rec.launches[0]
print(json.dumps({"kernel": ln.kernel, "n": len(rec.launches), "tuned": ln.tuned,
                  **compile_variant(ln.module, ln.kernel, ln.args, ln.constexprs, ln.configs[-1])}, default=str))
"""



def test_harness_compiles_one_config_for_sm90():
    """The capture (fake CUDA tensors through the real launcher) and one sm_90a compile, in a process without the
    interpreter: the eval SCDown kernel of the tiny model, bf16."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-c", _HARNESS], cwd=static.ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["kernel"] == "_pw_dw_kernel" and out["n"] == 1 and out["tuned"]
    assert "error" not in out, out.get("error")
    assert out["regs"] > 0 and out["mma"] in ("wgmma", "mma") and out["launchable"]


def test_saved_for_backward_bytes_yolov10n():
    """bench/static_memory on yolov10n (batch 2, 128 px, AMP on fake tensors): what autograd saves for backward is
    attributed to each fused module kind (the sum is the total, the rest of the model saves the same on both sides),
    and the drop-ins save less than the modules they replace, kind by kind; their host ops are fewer too. In a
    process without the interpreter, as python -m bench.static runs it (kernel launches are recorded, not run)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-m", "bench.static_memory", "--models", "yolov10n", "--batch", "2",
                        "--imgsz", "128"], cwd=static.ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    [row] = json.loads(p.stdout.strip().splitlines()[-1])
    assert row["fused_modules"] == {"CIB": 1, "SCDown": 3, "Attention": 1, "cls head": 6}
    eager, ours = row["eager"]["saved_bytes"], row["ours"]["saved_bytes"]
    for side in (eager, ours):
        assert sum(side["by_kind"].values()) == side["total"] and set(side["by_kind"]) == {*row["fused_modules"], "other"}
    assert ours["by_kind"]["other"] == eager["by_kind"]["other"] > 0
    for kind in row["fused_modules"]:
        assert 0 < ours["by_kind"][kind] < eager["by_kind"][kind], kind
    assert row["ours"]["host_ops"] < row["eager"]["host_ops"]
