"""yolov10_kernels.backend: where triton cannot be imported the package still imports, accelerate(auto) leaves a
working model with one warning, backend="triton" is a clear error, available() says why, and the ops raise
instead of launching kernels that were never defined. Run in a subprocess whose `triton` import fails."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NO_TRITON_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["triton"] = None  # `import triton` now raises ImportError, as where it is not installed
    import copy
    import warnings

    import torch

    import yolov10_kernels
    from yolov10.modules import CIB
    from yolov10.model import YOLOv10
    from yolov10_kernels.modules.cib import FusedCIB
    from yolov10_kernels.ops import chain_eval, chain_train, dwconv, psa_attention, pwconv  # noqa: F401

    def raises(fn, text):
        try:
            fn()
        except RuntimeError as e:
            assert text in str(e), str(e)
        else:
            raise AssertionError(f"no RuntimeError mentioning {text!r}")

    WHY = "triton cannot be imported ("
    ok, why = yolov10_kernels.available()["triton"]
    assert not ok and why.startswith(WHY), why

    torch.manual_seed(0)
    ref = YOLOv10("yolov10n")
    x = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acc = yolov10_kernels.accelerate(copy.deepcopy(ref))
        yolov10_kernels.accelerate(copy.deepcopy(ref), backend="reference")
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and WHY in msgs[0], msgs
    assert yolov10_kernels.swapped(acc) == {}
    for train in (True, False):
        acc.train(train), ref.train(train)
        with torch.no_grad():
            out, want = acc(x), ref(x)
        outs = [t for k in ("one2many", "one2one") for t in out[k]] if train else [out]
        wants = [t for k in ("one2many", "one2one") for t in want[k]] if train else [want]
        assert all(torch.equal(a, b) for a, b in zip(outs, wants))

    raises(lambda: yolov10_kernels.accelerate(copy.deepcopy(ref), backend="triton"), WHY)

    # a drop-in built by hand: the reference forward under 'auto', a clear error under 'triton'
    cib = CIB(8, 8).eval()
    y = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        assert torch.equal(FusedCIB.from_module(cib, "auto")(y), cib(y))
        raises(lambda: FusedCIB.from_module(cib, "triton")(y), WHY)
    # an op called directly raises instead of reaching a kernel that was never defined
    raises(lambda: dwconv.dw_conv_bn(y, torch.randn(8, 1, 3, 3), None, None, None, None, None, 1, False, False,
                                     True, False), WHY)
    print("OK")
""")


def test_package_works_without_triton():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", NO_TRITON_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout[-2000:] + proc.stderr[-4000:]
