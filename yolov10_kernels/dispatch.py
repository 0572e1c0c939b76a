"""Measured dispatch: never slower than the reference on the user's GPU.

A fused path that is slower than cuDNN on some card makes users pay for our guess. As cuDNN's benchmark mode
and Inductor's max-autotune do, `measure(model, ...)` times each drop-in's fused path against its reference path
on the device, at the model's real shapes (eval: the forward; train: forward + backward), on a copy of the
model (the model's parameters, gradients and running statistics are untouched), and keeps the faster per
(module structure, shape bucket, dtype, mode). The fused path must win by MARGIN (5 %): a tie, or noise, keeps
the reference.

- decisions: a table in this process, consulted on every call of a drop-in under backend 'auto' (a dict lookup,
  `fused_chosen`); an unmeasured key runs the fused path. backend 'triton' and 'reference' force their path.
- key: the drop-in's structure (`signature`: its class and submodules, not its weights or dtype), the shape
  bucket (`shape_bucket`: batch to the next power of two, channels, and the autotuners' per-image pixel bucket of
  ops/chain_eval), the input dtype, and 'train' or 'eval' (the module's training flag).
- cache: one JSON file per environment (GPU name, compute capability, torch and triton versions and
  `sources_hash()` of the kernel sources) under $YOLOV10_KERNELS_CACHE, else ~/.cache/yolov10_kernels/dispatch;
  any change there is another file, so the next measure() times again. Times are stored, the choice is re-made
  with the current margin.
- policy (`policy()`): 'fused' (the fused path wherever the backend allows it; the default when nothing was
  measured), 'reference' (the reference path everywhere), 'measure' (follow the decisions). An argument
  (`set_policy`, `accelerate(dispatch=...)`, `warmup(measure=True)`, the trainer's --dispatch) wins over
  $YOLOV10_KERNELS_DISPATCH, which wins over the default.
- the timer is injectable (`timer(fn, name, path, mode) -> milliseconds`): on CUDA `cuda_timer` (CUDA events,
  median of several runs after warm-up runs); tests pass a fake one."""
import contextlib
import copy
import dataclasses
import glob
import hashlib
import json
import os
import statistics
from typing import Optional

import torch

from .backend import TRITON_IMPORT_ERROR, kernels_disabled, triton_interpreted
from .ops.utils import size_bucket
from .ops.utils import next_pow2

MARGIN = 0.05  # the fused path is chosen only when it takes at most 95 % of the reference's time
POLICIES = ("fused", "reference", "measure")
ENV = "YOLOV10_KERNELS_DISPATCH"
MODES = ("eval", "train")
_PACKAGE = os.path.dirname(os.path.abspath(__file__))

_state = {"policy": None, "report": None}  # the policy set by an argument (None: the environment's); the last report
_decisions = {}  # (signature, bucket, dtype, mode) -> "fused" | "reference"


# ------------------------------------------------------------------------------------------------ the policy
def check_policy(policy):
    """policy, checked: one of POLICIES; anything else is a ValueError naming the choices."""
    if policy not in POLICIES:
        raise ValueError(f"dispatch must be one of {POLICIES}, got {policy!r}")
    return policy


def policy():
    """The policy in force: the last set_policy() argument, else $YOLOV10_KERNELS_DISPATCH, else 'fused'. A bad
    environment value is a ValueError."""
    if _state["policy"] is not None:
        return _state["policy"]
    value = os.environ.get(ENV, "").strip().lower()
    return check_policy(value) if value else "fused"


def set_policy(value):
    """Set the process's policy ('fused', 'reference', 'measure'; None: back to the environment's). Returns the
    policy now in force."""
    _state["policy"] = None if value is None else check_policy(value)
    return policy()


def clear():
    """Forget every decision, the policy argument and the last report (tests; a model measured again starts
    afresh)."""
    _decisions.clear()
    _state.update(policy=None, report=None)


def report():
    """The DispatchReport of this process's last measure() call, or None."""
    return _state["report"]


# ------------------------------------------------------------------------------------------------ the key
def signature(module):
    """A drop-in's structure as a short string: its replaced class and each submodule's name, class and
    extra_repr (channels, kernel sizes, groups, strides, eps...), not its weights, dtype or backend. Two modules
    with one signature run the same kernels at a given input."""
    parts = [getattr(module, "reference_class", type(module)).__name__]
    parts += [f"{n}:{type(m).__name__}({m.extra_repr()})" for n, m in module.named_modules() if m is not module]
    return f"{parts[0]}-{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:12]}"


def shape_bucket(shape):
    """(batch to the next power of two, channels, the autotuners' per-image pixel bucket) of an NCHW shape: the
    sizes inside one bucket share a decision."""
    b, c, h, w = shape
    return (next_pow2(b), c, size_bucket(h * w))


def decision_key(sig, shape, dtype, mode):
    """The decision table's key: (signature, shape bucket, dtype name, 'train' | 'eval')."""
    return (sig, shape_bucket(shape), str(dtype).replace("torch.", ""), mode)


def _key_text(key):
    sig, (b, c, p), dtype, mode = key
    return f"{sig}|b{b}c{c}p{p}|{dtype}|{mode}"


def choose(fused_ms, reference_ms, margin=MARGIN):
    """'fused' when the fused path takes at most (1 - margin) of the reference's time, else 'reference'."""
    return "fused" if fused_ms <= reference_ms * (1 - margin) else "reference"


@torch.compiler.assume_constant_result
def fused_chosen(sig, shape, dtype, training):
    """Per call of a drop-in under backend 'auto' where Triton runs: whether the fused path runs for input
    `shape` / `dtype` in training or eval mode (see policy()). A constant for torch.compile."""
    p = policy()
    if p != "measure":
        return p == "fused"
    return _decisions.get(decision_key(sig, tuple(shape), dtype, "train" if training else "eval"), "fused") == "fused"


# ------------------------------------------------------------------------------------------------ the timer
def cuda_timer(fn, name=None, path=None, mode=None, warmup=3, reps=15):
    """Milliseconds of one fn() on the current CUDA stream: the median of `reps` runs timed with CUDA events,
    after `warmup` untimed runs (compilation, autotuning, caches). name / path / mode (what is timed) are
    unused: the signature every timer has, so a test's fake timer can answer per case."""
    for _ in range(warmup):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def default_timer(device):
    """The timer measure() uses on `device` when none is given: cuda_timer on CUDA, None elsewhere (the CPU runs
    the reference under backend 'auto': nothing to choose)."""
    return cuda_timer if device.type == "cuda" else None


# ------------------------------------------------------------------------------------------------ the cache
def sources_hash():
    """sha256 over the kernel sources (yolov10_kernels/ops/*.py: path and content): a kernel change changes it."""
    h = hashlib.sha256()
    root = os.path.dirname(_PACKAGE)
    for path in sorted(glob.glob(os.path.join(_PACKAGE, "ops", "*.py"))):
        h.update(os.path.relpath(path, root).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def environment(device):
    """What decisions measured on `device` hold for: GPU name, compute capability, torch and triton versions,
    the kernel sources' hash. A dict; the cache file is named by its hash."""
    import triton  # measure() runs only where Triton imports
    if device.type == "cuda":
        gpu, cap = torch.cuda.get_device_name(device), ".".join(map(str, torch.cuda.get_device_capability(device)))
    else:
        gpu, cap = "cpu (Triton interpreter)", None
    return {"gpu": gpu, "capability": cap, "torch": torch.__version__, "triton": triton.__version__,
            "kernels": sources_hash()}


def cache_path(env):
    """The cache file of environment `env` (see environment())."""
    root = os.environ.get("YOLOV10_KERNELS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                     "yolov10_kernels", "dispatch")
    digest = hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(root, f"dispatch-{digest}.json")


def load_cache(env):
    """{key text: {"fused_ms", "reference_ms", "module", "shape"}} cached for `env`; {} when there is no file, or
    an unreadable one (it is measured again and rewritten)."""
    try:
        with open(cache_path(env)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data.get("decisions", {}) if data.get("env") == env else {}


def save_cache(env, entries):
    """Write `entries` (as load_cache returns them) for `env`, atomically; returns the path."""
    path = cache_path(env)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"env": env, "decisions": entries}, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------ the report
@dataclasses.dataclass
class Row:
    module: str  # the module's name in the model
    mode: str
    dtype: str
    shape: tuple  # the input shape measured at
    fused_ms: float
    reference_ms: float
    choice: str
    cached: bool = False  # from the cache file, not timed now


@dataclasses.dataclass
class DispatchReport:
    rows: list = dataclasses.field(default_factory=list)
    env: Optional[dict] = None
    cache: Optional[str] = None  # the cache file read and written
    skipped: Optional[str] = None  # why nothing was measured
    margin: float = MARGIN

    def __str__(self):
        if self.skipped:
            return f"dispatch: nothing measured ({self.skipped})"
        n = sum(r.choice == "fused" for r in self.rows)
        head = (f"dispatch on {self.env['gpu']}: fused where >= {self.margin:.0%} faster than the reference; "
                f"{n} fused, {len(self.rows) - n} reference"
                + (f"; {sum(r.cached for r in self.rows)} read from the cache {self.cache}" if self.cache else ""))
        lines = [head, f"{'module':28} {'mode':5} {'dtype':8} {'shape':18} {'fused ms':>9} {'ref ms':>9}  choice"]
        for r in self.rows:
            lines.append(f"{r.module:28} {r.mode:5} {r.dtype:8} {'x'.join(map(str, r.shape)):18} "
                         f"{r.fused_ms:9.3f} {r.reference_ms:9.3f}  {r.choice}{' (cached)' if r.cached else ''}")
        return "\n".join(lines)

    def as_dict(self):
        """The report as JSON-ready data (the GPU session records it)."""
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------ measuring
def dispatching(model):
    """[(name, module)]: the drop-ins of `model` whose own forward picks a path per call (a FusedPSA is not one:
    its FusedAttention is)."""
    out = []
    for name, m in model.named_modules():
        ref = getattr(m, "reference_class", None)
        if ref is not None and hasattr(m, "set_backend") and type(m).forward is not ref.forward:
            out.append((name, m))
    return out


def _why_not(model, device, timer):
    """Why measure() cannot measure `model` on `device` with `timer`, or None."""
    if kernels_disabled():
        return "YOLOV10_KERNELS=off"
    if TRITON_IMPORT_ERROR:
        return TRITON_IMPORT_ERROR
    if timer is None:
        return "no CUDA device: on the CPU backend 'auto' runs the reference modules, there is nothing to choose"
    if (device.type == "cuda") == triton_interpreted():
        return f"the fused path cannot run on {device.type} tensors with TRITON_INTERPRET={int(triton_interpreted())}"
    if not dispatching(model):
        return "the model has no drop-in (call accelerate(model) first)"
    return None


def _record(model, x, autocast):
    """[(name, drop-in, its input)] of one forward of `model` (a copy) on x without gradients, in call order."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.append((name, mod, args[0].detach())))
             for name, m in dispatching(model)]
    try:
        with torch.no_grad(), autocast():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _runner(m, x, mode, path, autocast):
    """fn() running one call of drop-in `m` (a copy) on x by `path` in `mode`: eval, the forward without
    gradients; train, the forward and the backward of a fixed random output gradient."""
    m.set_backend("triton" if path == "fused" else "reference")
    m.train(mode == "train")
    if mode == "eval":
        def run():
            with torch.no_grad(), autocast():
                m(x)
        return run
    xg = x.detach().requires_grad_()
    with autocast():
        grad = torch.randn_like(m(xg))

    def run():
        with autocast():
            y = m(xg)
        y.backward(grad)
    return run


def _decide(entries, name, m, x, mode, timer, autocast):
    """The decision entry of drop-in `m` at x in `mode`: from `entries` (the cache) when there, else timed (both
    paths, by `timer`) and added to `entries`. Returns (key, entry, cached)."""
    key = decision_key(m._dispatch_sig, tuple(x.shape), x.dtype, mode)
    text = _key_text(key)
    if text in entries:
        return key, entries[text], True
    ms = {path: float(timer(_runner(m, x, mode, path, autocast), name=name, path=path, mode=mode))
          for path in ("fused", "reference")}
    entries[text] = {"fused_ms": ms["fused"], "reference_ms": ms["reference"], "module": name,
                     "shape": list(x.shape)}
    return key, entries[text], False


def _check_shape(shape):
    if len(shape) != 4 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape):
        raise ValueError(f"shape must be 4 positive ints (batch, channels, height, width), got {shape!r}")
    return tuple(shape)


def measure(model, shape, dtype=torch.float16, train=False, *, amp=False, channels_last=True, timer=None,
            margin=MARGIN, cache=True):
    """Time each drop-in of `model` (accelerated: accelerate(model)) by its fused and its reference path at the
    inputs it gets from a `shape` (batch, channels, height, width) model input, keep the faster (the fused one
    only when it wins by `margin`) per (structure, shape bucket, dtype, mode) in this process's decisions, and set
    the policy to 'measure' (follow them).
    dtype: the model runs in it (a copy, model.to(dtype)); with amp=True the copy stays float32 and runs under
    torch.autocast(dtype), as the trainer does. train: also time the training step (forward + backward); eval is
    always timed. channels_last: the copy's memory format. timer: timer(fn, name=, path=, mode=) -> ms (default:
    default_timer(device)). cache: read and write the decisions' times in the cache file of this environment
    (see the module docstring): cached keys are not timed again.
    Everything runs on a deep copy: the model's parameters, gradients, running statistics and modes are
    untouched. Returns a DispatchReport (str() is the table); nothing is measured (report.skipped says why)
    without a CUDA device (unless a timer is given and TRITON_INTERPRET=1), with YOLOV10_KERNELS=off, without
    triton, or for a model without drop-ins. A bad shape is a ValueError."""
    shape = _check_shape(shape)
    device = next(model.parameters()).device
    timer = timer or default_timer(device)
    why = _why_not(model, device, timer)
    if why:
        _state["report"] = DispatchReport(skipped=why, margin=margin)
        return _state["report"]
    env = environment(device)
    entries = load_cache(env) if cache else {}
    work = copy.deepcopy(model).to(torch.float32 if amp else dtype)
    work = work.to(memory_format=torch.channels_last) if channels_last else work
    autocast = (lambda: torch.autocast(device.type, dtype)) if amp else contextlib.nullcontext
    x = torch.randn(shape, device=device, dtype=torch.float32 if amp else dtype)
    out = DispatchReport(env=env, margin=margin)
    done = set()
    for mode in MODES if train else ("eval",):  # a train forward calls more modules (the one-to-many head)
        for name, m, xi in _record(work.train(mode == "train"), x, autocast):
            key, e, cached = _decide(entries, name, m, xi, mode, timer, autocast)
            if key in done:  # a module called twice at one shape, or two alike modules: one row
                continue
            done.add(key)
            _decisions[key] = choose(e["fused_ms"], e["reference_ms"], margin)
            out.rows.append(Row(name, mode, key[2], tuple(xi.shape), e["fused_ms"], e["reference_ms"],
                                _decisions[key], cached))
    out.cache = save_cache(env, entries) if cache else None
    set_policy("measure")
    _state["report"] = out
    return out
