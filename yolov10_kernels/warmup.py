"""warmup(model, imgsz, batch, dtype): compile every Triton kernel variant an accelerated model will launch, in
parallel worker processes, before anything is timed.

A Triton kernel compiles on its first launch for each specialisation (argument dtypes, 16-byte alignment of
pointers, integers equal to 1 or divisible by 16, constexprs) and config; an autotuner compiles every config it
tries. At YOLOv10 sizes that is tens of variants at 2-60 s each, serially, inside the first training or inference
step. warmup() finds them without running anything (yolov10_kernels/capture.py: the model's real launchers on fake
CUDA tensors), then compiles each distinct variant with `JITFunction.run(..., warmup=True)` in a process pool.
Triton's on-disk cache (TRITON_CACHE_DIR, default ~/.triton/cache) then holds them, so the real run only loads
them (autotuners still time their configs once, on already compiled binaries).

The workers compile for a GPU target through a stand-in Triton driver, so they never create a CUDA context: on a
CUDA machine the target is the current device's; without one, `target="sm_90a"` (or "sm_80", 90, ...) compiles
for that GPU here (e.g. to fill a cache, or to test), and without a target warmup() does nothing and says why."""
import concurrent.futures as cf
import dataclasses
import importlib
import multiprocessing as mp
import os
import time
from typing import Optional

import torch

from .backend import TRITON_IMPORT_ERROR, kernels_disabled, triton_interpreted, warn_once
from . import dispatch, gpus
from .capture import capture

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclasses.dataclass
class WarmupSummary:
    target: Optional[str]  # "sm_90", the GPU compiled for; None when skipped
    launches: int = 0  # kernel launches recorded
    variants: int = 0  # distinct (kernel, specialisation, config) among them: what was compiled
    compiled: int = 0
    failed: list = dataclasses.field(default_factory=list)  # [{"kernel", "config", "error"}]
    seconds: float = 0.0
    workers: int = 0
    skipped: Optional[str] = None  # why nothing was compiled
    dispatch: Optional[object] = None  # warmup(measure=True): the measured dispatch's DispatchReport

    def __str__(self):
        return self._compiled() + (f"\n{self.dispatch}" if self.dispatch is not None else "")

    def _compiled(self):
        if self.skipped:
            return f"warmup: nothing compiled ({self.skipped})"
        return (f"warmup: {self.compiled}/{self.variants} kernel variants compiled for {self.target} from "
                f"{self.launches} launches in {self.seconds:.1f} s ({self.workers} workers"
                f"{f', {len(self.failed)} failed' if self.failed else ''})")


def warmup(model, imgsz=640, batch=1, dtype=torch.float16, train=False, *, amp=False, workers=None, target=None,
           channels_last=True, timeout_s=None, measure=None, timer=None):
    """Compile every Triton kernel variant that `model` launches, in parallel worker processes, before it runs.

    The launches are found without running anything (capture(): the eval forward, and with train=True also the
    train forward + backward, on fake CUDA tensors) and each distinct variant is compiled into Triton's on-disk
    cache. The model is left as it is. The workers are spawned processes: in a script, call this under
    `if __name__ == "__main__":`.

    Arguments:
        model: torch.nn.Module, accelerated (accelerate(model)), on any device and in any dtype (capture() runs
            a meta copy); not modified. Its input has model.ch channels (3 where it has no `ch`).
        imgsz: int (square) or (height, width) pair of positive ints. Default 640.
        batch: positive int, the input's batch size. Default 1. The input is (batch, model.ch or 3, *imgsz).
        dtype: torch.dtype or its name: torch.float16 (default), torch.bfloat16 or torch.float32. Without amp the
            model runs in it (model.half()).
        train: bool. Also capture the train forward + backward. Default False.
        amp: bool, keyword-only. Mixed precision as the trainer runs it: float32 parameters, the forward under
            torch.autocast(dtype). Default False.
        workers: None or positive int, keyword-only. Compile processes (at most one per variant). Default None:
            the CPU count.
        target: None, str or int, keyword-only. The GPU to compile for and whose launches to reproduce: a
            yolov10_kernels.gpus profile name ("RTX3090", "T4") or a compute capability ("sm_86", "sm_90a", 90).
            Default None: the current CUDA device; without one, nothing is compiled.
        channels_last: bool, keyword-only. The layout the model runs in (accelerate() puts a CUDA model in
            channels_last). Default True.
        timeout_s: None or float, keyword-only. Stop waiting for compiles after that many seconds (those under
            way finish in the background, into the cache; the rest are dropped). Default None: wait for all.
        measure: None or bool, keyword-only. True: also time each drop-in's fused path against its reference path
            at these shapes and keep the faster (yolov10_kernels.dispatch.measure, on the model's device, with
            `timer`); its report says why where nothing was measured, e.g. without a CUDA device. Default None:
            measure when the dispatch policy is "measure" ($YOLOV10_KERNELS_DISPATCH=measure); False: never. It
            runs even where nothing was compiled.
        timer: None or callable timer(fn, name=, path=, mode=) -> milliseconds, keyword-only, for measure.
            Default None: dispatch.default_timer(device).

    Returns:
        summary: WarmupSummary (str(): what was compiled, then the dispatch table): target ("sm_90"; None when
            skipped), launches recorded, distinct variants, compiled, failed ([{"kernel", "config", "error"}]),
            seconds, workers, skipped (why nothing was compiled, or None) and dispatch (the measured
            DispatchReport, or None). Nothing is compiled (summary.skipped says why, with one warning) where
            nothing can or need be: no CUDA device and no target, TRITON_INTERPRET=1, YOLOV10_KERNELS=off, triton
            missing, or a model without drop-ins.

    Raises:
        ValueError: a bad dtype, imgsz, batch or workers; an unknown target (checked unless YOLOV10_KERNELS=off
            or triton is missing); with measure=None, a bad $YOLOV10_KERNELS_DISPATCH value.
    """
    dtype, hw = _check_dtype(dtype), _check_imgsz(imgsz)
    for name, v in (("batch", batch), ("workers", 1 if workers is None else workers)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    gpu, why = resolve_target(target)
    launches, shape = [], (batch, getattr(model, "ch", 3), *hw)
    if not why:
        for mode in (False, True) if train else (False,):
            launches += capture(model, [shape], dtype, mode, channels_last, gpu, amp=amp)
        if not launches:
            why = "the model launches no Triton kernel (call accelerate(model) first)"
            if dtype == torch.bfloat16 and not gpu.bf16:  # every drop-in runs its reference there (DropIn.guarded)
                why = f"{gpu.name} has no bf16 tensor cores: bfloat16 runs the reference path; use float16"
    if why:
        warn_once(("warmup", why), f"yolov10_kernels.warmup: nothing compiled: {why}")
    summary = WarmupSummary(None, skipped=why) if why else compile_launches(launches, gpu.arch, workers, timeout_s)
    if measure or (measure is None and dispatch.policy() == "measure"):
        summary.dispatch = dispatch.measure(model, shape, dtype, train, amp=amp, channels_last=channels_last,
                                            timer=timer)
    return summary


def _check_dtype(dtype):
    d = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if d not in DTYPES:
        raise ValueError(f"dtype must be one of {[str(t) for t in DTYPES]} (or their names), got {dtype!r}")
    return d


def _check_imgsz(imgsz):
    hw = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz) if isinstance(imgsz, (tuple, list)) else ()
    if len(hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in hw):
        raise ValueError(f"imgsz must be a positive int or a (height, width) pair of them, got {imgsz!r}")
    return hw


def resolve_target(target):
    """(the yolov10_kernels.gpus profile to compile for, or None; why nothing can be compiled, or None). target: a
    profile name ("RTX3090"), a compute capability ("sm_86", 90), or None for the current CUDA device."""
    if kernels_disabled():
        return None, "YOLOV10_KERNELS=off"
    if TRITON_IMPORT_ERROR:
        return None, TRITON_IMPORT_ERROR
    profile = gpus.resolve(target) if target is not None else None  # a bad name is a ValueError here
    if triton_interpreted():  # the launchers were set up for the interpreter (its block sizes, no autotuning)
        return None, "TRITON_INTERPRET=1: the interpreter runs the kernels uncompiled"
    if profile is not None:
        return profile, None
    if not torch.cuda.is_available():
        return None, "no CUDA device (pass target='H100' or 'sm_90a' to compile for a GPU elsewhere)"
    return gpus.device_profile(torch.device("cuda", torch.cuda.current_device())), None


def _spec(v, specialize=True):
    """An argument by what Triton specialises on: a tensor by dtype and 16-byte alignment; an int by whether it
    fits 32 bits and (unless the kernel says do_not_specialize) by == 1 and divisibility by 16; a float or bool
    by type only."""
    if isinstance(v, (tuple, list)) and v and v[0] == "tensor":
        return ("tensor", v[1], v[3] if len(v) > 3 else True)
    if isinstance(v, bool):
        return "u1"
    if isinstance(v, int):
        bits = "i32" if -2**31 <= v < 2**31 else "i64"
        return bits if not specialize else 1 if v == 1 else (bits, v % 16 == 0)
    if isinstance(v, float):
        return "fp32"
    return tuple(v) if isinstance(v, list) else v


def variant_key(ln, cfg):
    """What Triton compiles launch `ln` (a capture.Launch) with config `cfg` into: kernel, argument
    specialisation, constexprs and config. Two launches with one key share one binary."""
    fixed = {p.name for p in getattr(ln.fn, "params", ()) if p.do_not_specialize}
    args = tuple(sorted((k, _spec(v, k not in fixed)) for k, v in ln.args.items()))
    return (ln.module, ln.kernel, args, tuple(sorted((k, _spec(v)) for k, v in ln.constexprs.items())),
            tuple(sorted(cfg.items())))


def variants(launches):
    """The distinct compile jobs (module, kernel, args, constexprs, config) of `launches`: one per kernel,
    specialisation and config."""
    jobs = {}
    for ln in launches:
        for cfg in ln.configs:
            jobs.setdefault(variant_key(ln, cfg), (ln.module, ln.kernel, ln.args, ln.constexprs, cfg))
    return list(jobs.values())


def compile_launches(launches, arch, workers=None, timeout_s=None):
    """Compile the distinct variants of `launches` (capture.Launch) for compute capability `arch` in `workers`
    processes (default: the CPU count); returns a WarmupSummary."""
    jobs = variants(launches)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    out = WarmupSummary(f"sm_{arch}", launches=len(launches), variants=len(jobs), workers=workers)
    t0 = time.perf_counter()
    # spawn: a forked child would inherit the parent's CUDA and Triton state
    pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                  initargs=(arch,))
    futures = {pool.submit(compile_variant, *job): job for job in jobs}
    try:
        for fut in cf.as_completed(futures, timeout=timeout_s):
            error = fut.result()
            if error:
                out.failed.append({"kernel": futures[fut][1], "config": futures[fut][4], "error": error})
            else:
                out.compiled += 1
    except cf.TimeoutError:  # the compiles under way finish in the background (into the cache); the rest is dropped
        pass
    finally:
        pool.shutdown(wait=out.compiled + len(out.failed) == len(jobs), cancel_futures=True)
    out.seconds = time.perf_counter() - t0
    return out


class _Driver:
    """Triton's active driver in a compile worker: answers for a GPU of compute capability `arch` without CUDA."""

    def __init__(self, arch):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        return torch.device("cpu")


def install_driver(arch):
    """Make Triton in this process compile for compute capability `arch` without CUDA (nothing can launch)."""
    from triton.runtime.driver import driver
    driver.set_active(_Driver(arch))


def _init_worker(arch):
    os.environ.pop("TRITON_INTERPRET", None)  # before the kernels' modules are imported: they read it
    install_driver(arch)


def _value(v):
    """A recorded argument back as something Triton specialises the same way: tensors as small CPU tensors of
    their dtype and alignment (compiling reads nothing else), tl dtypes as tl dtypes."""
    import triton.language as tl
    if isinstance(v, (tuple, list)) and v and v[0] == "tensor":
        t = torch.empty(80, dtype=getattr(torch, v[1]))  # the CPU allocator aligns to 64 bytes
        return t if len(v) < 4 or v[3] else t[1:]
    if isinstance(v, (tuple, list)) and v and v[0] == "tl":
        return {str(t): t for t in (tl.float16, tl.bfloat16, tl.float32, tl.float64)}[v[1]]
    return v


def kernel(module, name):
    """The JITFunction `module.name` (under its autotuner or heuristics wrappers)."""
    from triton.runtime.jit import JITFunction
    fn = getattr(importlib.import_module(module), name)
    while not isinstance(fn, JITFunction):
        fn = fn.fn
    return fn


def compile_kernel(module, name, args, constexprs, config):
    """Compile one recorded variant (capture.Launch's module, kernel, args, constexprs and one of its configs)
    into Triton's cache; returns Triton's compiled kernel (its binaries and metadata)."""
    fn = kernel(module, name)
    meta = {k: v for k, v in config.items() if k not in ("num_warps", "num_stages")}
    pos = [_value(args[p.name]) for p in fn.params if p.name in args]
    return fn.run(*pos, grid=(1,), warmup=True, num_warps=config["num_warps"], num_stages=config["num_stages"],
                  **{k: _value(v) for k, v in constexprs.items()}, **meta)


def compile_variant(*job):
    """compile_kernel(*job) in a worker of compile_launches: None, or the error (the other variants still compile)."""
    try:
        compile_kernel(*job)
    except Exception as e:
        return f"{type(e).__name__}: {str(e)[-600:]}"
    return None
