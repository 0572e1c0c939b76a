"""Shared benchmark machinery: timers (CUDA: triton.testing.do_bench / do_bench_cudagraph; CPU: perf_counter),
rotating input pools, peak memory, copy bandwidth, environment capture, the time budget, result rows and the
result-file reader (bench/results.py writes them). Every other bench module builds on these."""
import dataclasses
import gc
import itertools
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

QUANTILES = (0.5, 0.2, 0.8)  # median, p20, p80
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCHEMA = 1

# Impl names. Rows with impl "eager" are the reference modules run by eager PyTorch (cuDNN / MKL-DNN);
# "compile" is torch.compile of those modules; "compile_sdpa" the PSA rewrite on scaled_dot_product_attention
# under torch.compile; "ours" this package's kernels. bench/assign.py names its own ("reference", "cpp", ...).
BASELINE_IMPLS = ("eager", "reference")
COMPILE_IMPLS = ("compile", "compile_sdpa")


class NotAvailable(Exception):
    """Raised by a row's set-up when the implementation cannot run here; the row records the reason."""


# ------------------------------------------------------------------------------------------------- timing
@dataclasses.dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    timer: str
    samples: int


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _quantiles(times):
    times = sorted(times)
    if len(times) == 1:
        return times[0], times[0], times[0]
    q = statistics.quantiles(times, n=10, method="inclusive")  # deciles: q[1] = p20, q[7] = p80
    return statistics.median(times), q[1], q[7]


def time_cpu(fn, rep_ms=200.0, warmup_ms=50.0, min_reps=3, max_reps=200, grad_to_none=None):
    """Median/p20/p80 of `fn` with a host clock: warm up for warmup_ms (at least one call), then repeat until
    rep_ms of samples or max_reps. Gradients in grad_to_none are reset before each call, outside the timing."""
    def reset():
        for t in grad_to_none or ():
            t.grad = None

    t_end = time.perf_counter() + warmup_ms / 1e3
    reset()
    fn()
    while time.perf_counter() < t_end:
        reset()
        fn()
    times = []
    t_end = time.perf_counter() + rep_ms / 1e3
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() < t_end):
        reset()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    med, p20, p80 = _quantiles(times)
    return Timing(med, p20, p80, "cpu-perf_counter", len(times))


def _events_bench(fn, rep_ms, warmup_ms, grad_to_none):
    """CUDA-event timing for machines without Triton (do_bench needs it)."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est = max((time.perf_counter() - t0) * 1e3, 1e-3)
    for _ in range(max(1, int(warmup_ms / est))):
        fn()
    n = max(3, int(rep_ms / est))
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for s, e in ev:
        for t in grad_to_none or ():
            t.grad = None
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    med, p20, p80 = _quantiles([s.elapsed_time(e) for s, e in ev])
    return Timing(med, p20, p80, "cuda-events", n)


def time_cuda(fn, rep_ms=100.0, warmup_ms=25.0, cudagraph=False, grad_to_none=None):
    """triton.testing.do_bench (L2 flushed before every call) or, with cudagraph=True, do_bench_cudagraph:
    the calls are captured into one CUDA graph and replayed, which removes launch overhead (small-batch
    latency rows). Returns median/p20/p80 in ms."""
    try:
        from triton.testing import do_bench, do_bench_cudagraph
    except Exception:  # no triton: plain CUDA events
        if cudagraph:
            raise NotAvailable("CUDA-graph timing needs triton.testing.do_bench_cudagraph")
        return _events_bench(fn, rep_ms, warmup_ms, grad_to_none)
    if cudagraph:
        # warm up on a side stream first: lazy initialisation (cuBLAS handles, autotuning, cudnn plans)
        # must not happen inside the capture
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        # do_bench_cudagraph replays one graph of ~rep ms 10 times: 30 ms graphs give 10 stable samples of
        # the per-call time of these (sub-)millisecond calls without spending 10 x rep_ms per row
        med, p20, p80 = do_bench_cudagraph(fn, rep=min(rep_ms, 30.0), quantiles=list(QUANTILES))
        return Timing(med, p20, p80, "do_bench_cudagraph", 10)
    med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, quantiles=list(QUANTILES))
    return Timing(med, p20, p80, "do_bench", 0)


def time_fn(fn, device, rep_ms=100.0, warmup_ms=25.0, cudagraph=False, grad_to_none=None):
    if torch.device(device).type == "cuda":
        return time_cuda(fn, rep_ms, warmup_ms, cudagraph, grad_to_none)
    return time_cpu(fn, rep_ms, warmup_ms, grad_to_none=grad_to_none)


def peak_extra_mb(fn, device):
    """Peak device memory allocated while `fn` runs, beyond what was allocated before (MiB). CUDA only:
    the CPU allocator keeps no peak statistics (None there)."""
    if torch.device(device).type != "cuda":
        return None
    gc.collect()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# ------------------------------------------------------------------------------------------ inputs & bytes
class Pool:
    """A few input sets cycled call by call, so that a small working set is not served from L2 every time."""

    def __init__(self, make, n):
        self.items = [make(i) for i in range(max(1, n))]
        self._it = itertools.cycle(range(len(self.items)))

    def next(self):
        return self.items[next(self._it)]

    def __len__(self):
        return len(self.items)


def l2_bytes(device):
    if torch.device(device).type != "cuda":
        return 32 * 2**20
    return int(getattr(torch.cuda.get_device_properties(torch.device(device)), "L2_cache_size", 50 * 2**20))


def pool_size(bytes_per_set, device, cap_bytes=2 * 2**30):
    """Enough input sets that one cycle covers at least 3x the L2 cache (2..32 sets, at most cap_bytes)."""
    want = math.ceil(3 * l2_bytes(device) / max(1, bytes_per_set))
    return int(max(2, min(32, want, cap_bytes // max(1, bytes_per_set))))


def nbytes(obj):
    """Bytes held by a tensor, or by the tensors in a (nested) list/tuple/dict, or by a module's parameters
    and buffers."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, torch.nn.Module):
        return sum(nbytes(t) for t in itertools.chain(obj.parameters(), obj.buffers()))
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


def measure_copy_bandwidth(device, size_mb=None):
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written, measured now."""
    dev = torch.device(device)
    size_mb = size_mb or (1024 if dev.type == "cuda" else 128)
    n = size_mb * 2**20
    src = torch.empty(n, dtype=torch.uint8, device=dev).random_(0, 255)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), dev, rep_ms=100 if dev.type == "cuda" else 300, warmup_ms=25)
    del src, dst
    return 2 * n / (t.median_ms * 1e-3) / 1e9


# ------------------------------------------------------------------------------------------- environment
def _git(*args):
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device):
    dev = torch.device(device)
    try:
        import triton
        triton_v = triton.__version__
    except Exception as e:
        triton_v = f"not importable ({type(e).__name__})"
    env = {
        "device_type": dev.type,
        "torch": torch.__version__,
        "triton": triton_v,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
        "yolov10_kernels_env": os.environ.get("YOLOV10_KERNELS", ""),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        env.update(device_name=p.name, compute_capability=f"{p.major}.{p.minor}", sm_count=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1), l2_mib=round(l2_bytes(dev) / 2**20, 1))
    else:
        env.update(device_name=f"CPU: {env['cpu']}")
    try:
        import yolov10_kernels
        env["kernels_available"] = {k: list(v) for k, v in yolov10_kernels.available().items()}
    except Exception as e:
        env["kernels_available"] = f"yolov10_kernels.available() failed: {type(e).__name__}: {e}"
    return env


def device_slug(env):
    if env["device_type"] == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", env["device_name"].lower()).strip("-")
    return "cpu"


# ------------------------------------------------------------------------------------------------ budget
class Budget:
    """Wall-clock budget of a run, split into ordered sections: section(name, share) may use that share of the
    time still left when it starts (so a section that overran shrinks the later ones instead of starving
    them). Rows ask fits(estimate_s) before they start; a row that would not fit is skipped and says why, so
    the run ends inside its budget and the summary still prints."""

    def __init__(self, total_s):
        self.total_s = total_s
        self.t0 = time.monotonic()
        self.section_name, self.section_end = "all", total_s
        self.log = []

    def elapsed(self):
        return time.monotonic() - self.t0

    def section(self, name, share=1.0):
        self.section_name = name
        now = self.elapsed()
        self.section_end = min(self.total_s, now + share * max(self.total_s - now, 0.0))
        self.log.append({"section": name, "start_s": round(self.elapsed(), 1), "until_s": round(self.section_end, 1)})

    def left(self):
        return min(self.section_end, self.total_s) - self.elapsed()

    def fits(self, estimate_s=0.0):
        left = self.left()
        if left >= estimate_s and left > 0:
            return True, ""
        return False, (f"skipped: time budget (section {self.section_name!r} has {max(left, 0):.0f}s left of "
                       f"{self.total_s:.0f}s total, row needs ~{estimate_s:.0f}s)")


# -------------------------------------------------------------------------------------------------- rows
def make_row(**kw):
    """One result row. Required: op, mode, impl. status "ok" rows carry median/p20/p80 in ms; others carry the
    reason ("not available: ...", "skipped: ...", "error: ...")."""
    row = {"op": kw.pop("op"), "mode": kw.pop("mode"), "impl": kw.pop("impl"), "status": kw.pop("status", "ok")}
    row.update(kw)
    return row


def timing_fields(t):
    return {"median_ms": t.median_ms, "p20_ms": t.p20_ms, "p80_ms": t.p80_ms, "timer": t.timer}


def row_key(r):
    """Rows that measure the same thing on the same shape share a key (impl excluded)."""
    return (r.get("op"), r.get("mode"), r.get("case") or str(r.get("shape")), r.get("dtype"))


# -------------------------------------------------------------------------------------------------- I/O
def load_results(path):
    data = json.loads(Path(path).read_text())
    if "rows" not in data or "env" not in data:
        raise ValueError(f"{path} is not a bench result file (no 'rows'/'env')")
    return data


def log(msg):
    print(msg, flush=True)
    sys.stdout.flush()
