"""The GPU session's pytest phase: the tests that need CUDA, run with pytest on the GPU machine, so every test that
skips on a CPU machine runs in the one GPU call. Two passes, each one pytest process appending its output to
session.log; their JUnit XML is merged into $OUT/pytest.xml after each pass (a timeout keeps the first):

  1. CUDA_ONLY: the tests that skip without a CUDA device (the TF32 paths, fp16/bf16 against PyTorch's own error,
     peak memory, the GPU smoke of every bench row, CUDA graph capture of the assigner);
  2. GPU_FILES (less the tests of pass 1): the test files whose tests take the CUDA path where there is one (their
     DEV is "cuda"; the assigner's device parameter gains "cuda"), as long as the phase's time lasts.

The GPU machine has no ultralytics: gpu_session.sh sets YOLOV10_NO_ORACLE=1, so parity tests skip there
(tests/oracle.py). Near the phase's deadline a pass gets SIGINT: pytest stops and still writes its XML. A dry run
(CPU) runs pass 1 alone, whose tests all skip here (the selection resolves, the XML is written and read back);
the CPU suite itself runs the files of pass 2."""
import importlib.util
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from .session_io import LOG_NAME

ROOT = Path(__file__).resolve().parent.parent
XML_NAME = "pytest.xml"
CUDA_ONLY = (
    "tests/test_chain_train.py::test_chain_fp32_tf32_default",
    "tests/test_psa_attention.py::test_psa_fp32_tf32_default",
    "tests/test_psa_attention.py::test_low_precision_gpu",
    "tests/test_psa_attention.py::test_no_quadratic_memory_gpu",
    "tests/test_chain_eval.py::test_gpu_lowp_blocks",
    "tests/test_chain_eval.py::test_gpu_fp32_blocks",
    "tests/test_bench.py::test_smoke_every_op_row_on_gpu",
    "tests/test_ultralytics_patch.py::test_cuda_graph_capture",
)
GPU_FILES = ("tests/test_assigner.py", "tests/test_pwconv.py", "tests/test_batchnorm.py", "tests/test_bn_batch_affine.py",
             "tests/test_dwconv.py", "tests/test_dw_conv_bn_act.py", "tests/test_dw_repvgg_bn.py",
             "tests/test_chain_train.py", "tests/test_psa_attention.py", "tests/test_psa_v_norm.py",
             "tests/test_chain_eval.py")
# test files that ask torch.cuda.is_available() but have nothing to run on a GPU (tests/test_gpu_session.py checks
# that every other such file is selected above)
NOT_ON_GPU = {
    "tests/test_accelerate.py": "its CUDA checks skip where CUDA exists (CPU-only behaviour)",
    "tests/test_warmup.py": "compiles for sm_90 without a device; its CUDA check is CPU-only behaviour",
    "tests/test_ultralytics84.py": "runs tests/test_ultralytics_patch.py under ultralytics 8.4 (none on the GPU)",
}
PER_TEST_S = 120  # pytest-timeout (installed on the GPU machine): one hung test must not take the whole phase
STOP_S = 10  # a pass gets SIGINT this long before the phase's deadline, to write its XML (killed 5 s later)


def _args(xml, dry_run):
    args = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", f"--junitxml={xml}",
            "--durations=10"]
    if not dry_run and importlib.util.find_spec("pytest_timeout"):
        args.append(f"--timeout={PER_TEST_S}")
    return args


def _run_pytest(session, args):
    """Run pytest with its output appended to session.log until the phase's deadline less STOP_S (then SIGINT);
    returns its exit status, or "stopped (time budget)"."""
    with open(session.out / LOG_NAME, "a") as log:
        child = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            return child.wait(timeout=max(session.left() - STOP_S, 1))
        except subprocess.TimeoutExpired:
            return "stopped (time budget)"
        finally:
            if child.poll() is None:  # the budget, or the phase's own SIGTERM: pytest writes its XML on SIGINT
                child.send_signal(signal.SIGINT)
                try:
                    child.wait(timeout=STOP_S - 5)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


def _cases(xml):
    """[(test id, outcome, message)] from a JUnit XML file; outcome: passed / failed / error / skipped."""
    out = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        found = [(tag, el.get("message", "")) for tag in ("failure", "error", "skipped") for el in case.findall(tag)]
        tag, msg = found[0] if found else ("passed", "")
        out.append((name, {"failure": "failed"}.get(tag, tag), msg[:300]))
    return out


def _merge(parts, dest):
    """The <testsuite> elements of every part file, under one <testsuites> in dest."""
    root = ET.Element("testsuites", name="gpu session")
    for part in parts:
        root.extend(ET.parse(part).getroot().iter("testsuite"))
    ET.ElementTree(root).write(dest, encoding="utf-8", xml_declaration=True)


def run(session, f):
    """The phase body (bench/gpu_session.py): one item per pass with its outcome counts and non-passing tests."""
    passes = [("cuda_only", list(CUDA_ONLY))]
    if not session.dry_run:  # on the CPU the suite itself runs these files
        passes.append(("gpu_files", list(GPU_FILES) + [f"--deselect={t}" for t in CUDA_ONLY]))
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, selection) in enumerate(passes):
            xml = Path(tmp) / f"{i}.xml"
            session.log(f"  pytest {name}: {len(selection)} arguments")
            rc = _run_pytest(session, _args(xml, session.dry_run) + selection)
            cases = _cases(xml) if xml.exists() else []
            if xml.exists():
                parts.append(xml)
                _merge(parts, session.out / XML_NAME)
            counts = {o: sum(1 for _, oc, _ in cases if oc == o) for o in ("passed", "failed", "error", "skipped")}
            f.add({"what": name, "rc": rc, "tests": len(cases), **counts,
                   "not_passed": [c for c in cases if c[1] in ("failed", "error")],
                   "skipped_tests": [c for c in cases if c[1] == "skipped"]})
            session.log(f"  pytest {name}: rc {rc}, {len(cases)} tests {counts}")
            if session.left() <= STOP_S:
                break
