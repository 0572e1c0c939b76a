"""The one-call GPU session cannot rot between GPU runs: its dry run (every phase on the CPU at tiny sizes,
through the Triton interpreter) must finish within 3 minutes and leave every result file with real content,
within the device tool's limit of 8 files in $OUT."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import gpu_tests

ROOT = Path(__file__).resolve().parent.parent
FILES = ("env.json", "build.json", "correctness.json", "pytest.xml", "sweep.json", "bench.json", "ncu.json",
         "session.log")


def test_dry_run_writes_every_phase_file(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PY=sys.executable)
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), "--dry-run"], env=env, capture_output=True,
                       text=True, timeout=240)
    wall = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert wall <= 180, f"dry run took {wall:.0f}s (limit 180s)"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    phase = {n: json.loads((tmp_path / n).read_text()) for n in FILES if n.endswith(".json") and n != "bench.json"}
    for name, d in phase.items():
        assert d["dry_run"] is True and d["status"] == "ok" and d["items"], (name, d["status"])
    assert phase["env.json"]["env"]["torch"]
    build = {it["what"]: it for it in phase["build.json"]["items"]}
    assert build["extension"]["status"] == "ok" and build["warm"]["status"] == "ok", build
    checks = phase["correctness.json"]["items"]
    assert {it["what"] for it in checks} == {"op", "model", "assigner"}
    assert all(it["status"] == "pass" for it in checks), [(it["case"], it["status"]) for it in checks]
    assert {it["op"] for it in checks if it["what"] == "op"} == {"cib", "scdown", "cls_head", "psa"}
    decided = phase["correctness.json"]["dispatch"]  # the measured dispatch: times and choice per drop-in
    assert decided["status"] == "ok" and decided["rows"] and "fused ms" in decided["table"], decided.get("status")
    assert all(it["configs"] for it in phase["sweep.json"]["items"])
    assert phase["ncu.json"]["items"][0]["status"].startswith("not available")
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["rows"] and all(not str(r["status"]).startswith("error") for r in bench["rows"])
    log = (tmp_path / "session.log").read_text()
    assert log.count("] phase ") == 7 and "gpu_session: done" in log
    # the pytest phase: the CUDA-only tests ran through pytest and skipped here, each saying why, into pytest.xml
    cases = {name: (outcome, why) for name, outcome, why in gpu_tests._cases(tmp_path / "pytest.xml")}
    wanted = {t.replace("tests/", "tests.").replace(".py::", "::") for t in gpu_tests.CUDA_ONLY}
    assert {n.split("[")[0] for n in cases} == wanted, sorted(cases)
    assert all(o == "skipped" and ("CUDA" in why or "GPU" in why) for o, why in cases.values()), cases
    assert "pytest cuda_only: rc 0" in log, [line for line in log.splitlines() if "pytest" in line]


def test_comparison_rules():
    """fp32: relative to max|ref| (or the case's gradient scale); fp16/bf16: at most twice PyTorch's own
    low-precision error plus atol; a non-finite output always fails."""
    import torch
    from bench.gpu_check import compare
    ref = torch.tensor([1.0, -2.0, 4.0])
    assert compare(ref + 3e-4, ref, None, torch.float32)["ok"]           # 3e-4 <= 1e-4 * 4
    assert not compare(ref + 5e-4, ref, None, torch.float32)["ok"]
    tiny = ref * 1e-6  # a gradient that cancels to ~0 is judged against the case's scale
    assert not compare(tiny * 1.1, tiny, None, torch.float32)["ok"]
    assert compare(tiny * 1.1, tiny, None, torch.float32, scale=4.0)["ok"]
    lowp = ref + 0.1  # PyTorch's own bf16 error: 0.1
    assert compare(ref + 0.2 + 0.05 * 4 - 1e-3, ref, lowp, torch.bfloat16)["ok"]
    assert not compare(ref + 0.2 + 0.05 * 4 + 1e-2, ref, lowp, torch.bfloat16)["ok"]
    assert not compare(ref * float("nan"), ref, lowp, torch.float16)["ok"]


def test_bench_warm_up_says_why_it_compiles_nothing_without_a_gpu():
    """python -m bench's warm-up (CUDA only) in its child process: on this CPU machine it compiles nothing and
    says why, in time, leaving no child behind."""
    from bench.warm import warm_up
    t0 = time.monotonic()
    out = warm_up(120, workers=1)
    assert out["status"].startswith("skipped") and "CUDA" in out["status"], out
    assert time.monotonic() - t0 < 120


def test_pytest_phase_selects_every_test_file_with_a_cuda_path():
    """Every test file that asks torch whether CUDA is available is in the GPU session's pytest selection (its files, or
    its CUDA-only tests) or says why it has nothing to run on a GPU; the selection names existing files."""
    asking = {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")
              if "torch.cuda.is_available()" in p.read_text() and p.name != Path(__file__).name}
    selected = set(gpu_tests.GPU_FILES) | {t.split("::")[0] for t in gpu_tests.CUDA_ONLY}
    assert asking - selected - set(gpu_tests.NOT_ON_GPU) == set()
    assert all((ROOT / f).is_file() for f in selected | set(gpu_tests.NOT_ON_GPU))
    assert not selected & set(gpu_tests.NOT_ON_GPU)
