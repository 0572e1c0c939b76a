"""python -m bench.static_memory [--models yolov10n,yolo11n,...] [--batch 16] [--imgsz 640]: per model, what one
AMP training step keeps for backward, eager vs patched (every drop-in on its Triton path), and the host ops of the
step's model part; on the CPU, no GPU. Prints the rows as JSON; bench/static.py puts them in the static report
("memory").

Saved bytes: the model's train-mode forward under autocast (float16) on fake tensors (FakeTensorMode: shapes and
dtypes, no data), with a saved_tensors_hooks pack hook that sums the bytes of each distinct storage autograd saves
for backward, parameters and buffers left out (they live anyway; autocast's float16 weight copies count). A forward
pre/post hook pair on each drop-in (and on the eager module at the same name) attributes what is saved while it
runs to its kind ("other": outside every fused module). The fake tensors are CPU tensors under the CPU's autocast:
torch built without CUDA cannot record autograd on fake CUDA tensors (capture.fake_gpu's, which run no backward).
CPU autocast runs convolutions and matmuls in float16 as CUDA's does; CUDA's also runs softmax in float32, so on a
GPU eager attention saves a little more than counted here. The custom ops run their fake implementations (no
kernel runs). The loss is left out: it saves the same on both sides (the assigner runs without gradients).

Host ops: bench/static_ops.count_model_ops, the model's forward + backward on the meta device.

yolov10n/s are the package's reference models; yolo11n/s and yolo26n/s are ultralytics' (yolo26 needs 8.4),
imported here only. `measure_isolated` runs this module in a subprocess with the venv's ultralytics84 folder (the
8.4.190 oracle scripts/test.sh installs) first on the path."""
import argparse
import collections
import contextlib
import copy
import itertools
import json
import os
import subprocess
import sys

import torch

from yolov10_kernels.capture import patched

MODELS = ("yolov10n", "yolov10s", "yolo11n", "yolo11s", "yolo26n", "yolo26s")
BATCH, IMGSZ, AMP_DTYPE = 16, 640, torch.float16
ULTRALYTICS84 = os.path.join(sys.prefix, "ultralytics84")  # scripts/test.sh: pip install --target .venv/ultralytics84


def build(name):
    """(eager model, patched copy with every drop-in on backend "triton"), both in train mode."""
    from yolov10_kernels.accelerate import accelerate

    from .static_ops import _patched_cuda
    if name.startswith("yolov10"):
        from yolov10 import YOLOv10
        torch.manual_seed(0)
        eager = YOLOv10(name[-1]).train()
        with _patched_cuda():
            return eager, accelerate(copy.deepcopy(eager), backend="triton").train()
    from yolov10_kernels.integrations.ultralytics import swap_modules
    try:
        from ultralytics.nn.tasks import DetectionModel
        torch.manual_seed(0)
        eager = DetectionModel(f"{name}.yaml", nc=80, verbose=False).train()
    except (ImportError, FileNotFoundError) as e:
        raise RuntimeError(f"{name} needs ultralytics (yolo26: 8.4; pip install --no-deps --target {ULTRALYTICS84} "
                           f"ultralytics==8.4.190, as scripts/test.sh does): {e}") from e
    ours = copy.deepcopy(eager)
    with _patched_cuda():
        swap_modules(ours, backend="triton")
    return eager, ours.train()


def fused_kinds(model):
    """{module name: kind} of the drop-ins that run kernels themselves (hold no other drop-in): CIB, SCDown,
    Attention, cls head."""
    from yolov10_kernels.modules.cib import FusedCIB
    from yolov10_kernels.modules.cls_head import FusedClsHead
    from yolov10_kernels.modules.dropin import DropIn
    from yolov10_kernels.modules.psa import FusedAttention
    from yolov10_kernels.modules.scdown import FusedSCDown
    kinds = ((FusedCIB, "CIB"), (FusedSCDown, "SCDown"), (FusedAttention, "Attention"), (FusedClsHead, "cls head"))
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, DropIn) and not any(isinstance(c, DropIn) for c in m.modules() if c is not m):
            out[name] = next(k for cls, k in kinds if isinstance(m, cls))
    return out


def _storage(t):
    return t.untyped_storage()._cdata


@contextlib.contextmanager
def _fused_path_on_fake():
    """The drop-ins take their Triton path on fake CPU tensors; a kernel launch (an autograd.Function's forward)
    is skipped: only shapes and dtypes matter here."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    from yolov10_kernels.modules import dropin

    def no_launch(*args, **kwargs):
        return None
    with patched(dropin, "use_triton_on", lambda backend, device_type: True), \
            patched(JITFunction, "run", no_launch), patched(Autotuner, "run", no_launch):
        yield


def saved_bytes(model, kinds, batch=BATCH, imgsz=IMGSZ, dtype=AMP_DTYPE):
    """{"total": bytes, "by_kind": {kind or "other": bytes}} that autograd saves for backward in one train-mode
    forward of `model` under autocast(dtype) (see the module docstring); kinds: {module name: kind}."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    model = copy.deepcopy(model).train()  # the fake step leaves nothing behind in the caller's model
    if hasattr(model, "_check_input"):  # yolov10's input check reads the stride buffer's values: here, not faked
        model._check_input(torch.empty(batch, 3, imgsz, imgsz, device="meta"))
        model._check_input = lambda x: None
    skip = {_storage(t) for t in itertools.chain(model.parameters(), model.buffers())}
    seen, by_kind, running = set(), collections.Counter(), []

    def pack(t):
        key = _storage(t)
        if key not in seen and key not in skip:
            seen.add(key)
            by_kind[running[-1] if running else "other"] += t.untyped_storage().nbytes()
        return t
    def leave(*_):  # returns None: the module's output stays
        running.pop()
    hooks = []
    for name, kind in kinds.items():
        m = model.get_submodule(name)
        hooks += [m.register_forward_pre_hook(lambda *_, k=kind: running.append(k)), m.register_forward_hook(leave)]
    try:
        with _fused_path_on_fake(), FakeTensorMode(allow_non_fake_inputs=True), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype):
            model(torch.empty(batch, 3, imgsz, imgsz))
    finally:
        for h in hooks:
            h.remove()
    return {"total": sum(by_kind.values()), "by_kind": dict(sorted(by_kind.items()))}


def measure(name, batch=BATCH, imgsz=IMGSZ, dtype=AMP_DTYPE, host_ops=True):
    """One report row: model, shapes, the fused modules per kind, and per side (eager, ours) the saved bytes
    (total, by kind) and, with host_ops, the host ops of the model's forward + backward."""
    from .static_ops import count_model_ops
    eager, ours = build(name)
    kinds = fused_kinds(ours)
    row = {"model": name, "batch": batch, "imgsz": imgsz, "amp": str(dtype)[6:],
           "fused_modules": dict(collections.Counter(kinds.values()))}
    ops = count_model_ops(eager, ours, batch, imgsz) if host_ops else {}
    for side, m in (("eager", eager), ("ours", ours)):
        row[side] = {"saved_bytes": saved_bytes(m, kinds, batch, imgsz, dtype)}
        if host_ops:
            row[side]["host_ops"] = ops[side]["model_ops"]
    return row


def measure_isolated(models=MODELS, batch=BATCH, imgsz=IMGSZ, timeout=1800):
    """measure() of each model in a subprocess whose path starts with ULTRALYTICS84 (when it exists: yolo26 needs
    8.4; the process that asks may hold another ultralytics already). Returns the rows."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [p for p in (ULTRALYTICS84, root) if os.path.isdir(p)]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), YOLO_OFFLINE="1")
    env.pop("TRITON_INTERPRET", None)
    run = subprocess.run([sys.executable, "-m", "bench.static_memory", "--models", ",".join(models), "--batch",
                          str(batch), "--imgsz", str(imgsz)], cwd=root, env=env, capture_output=True, text=True,
                         timeout=timeout)
    if run.returncode:
        raise RuntimeError(f"bench.static_memory failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.static_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--imgsz", type=int, default=IMGSZ)
    a = p.parse_args(argv)
    unknown = sorted(set(a.models.split(",")) - set(MODELS))
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    print(json.dumps([measure(m, a.batch, a.imgsz) for m in a.models.split(",")]))


if __name__ == "__main__":
    main()
