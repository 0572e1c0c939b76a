"""Build phase of the GPU session: the C++/CUDA extension (ninja, MAX_JOBS parallel) and, at the same time,
every Triton kernel variant that the correctness, sweep and bench phases will launch, found on fake CUDA tensors
and compiled in a pool of worker processes by yolov10_kernels.warmup. Triton's on-disk cache then serves the
later phases, so no timing window pays for a compilation (autotuners still time their configs once, on compiled
binaries).

The kernel warm-up runs in a child process without TRITON_INTERPRET (the launchers read it at import): on the GPU
for the current device, on a dry run (the interpreter, no GPU) for sm_90a, a compile that needs no GPU."""
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

GPU_WORKERS = 14  # of the GPU machine's 16 cores; the extension build takes the others
DRY_WORKERS = 2
DRY_TARGET = "sm_90a"


def _build_extension(out_log, env):
    """Load (JIT-build if needed) the assignment extension in a child process writing to out_log."""
    code = ("import sys, bench.assign as a; dev = sys.argv[1]; ok, how = a.op_status(dev); "
            "print('extension', dev, ok, how, flush=True); sys.exit(0 if ok else 1)")
    dev = "cpu" if env.get("TRITON_INTERPRET") == "1" else "cuda"
    return subprocess.Popen([sys.executable, "-c", code, dev], stdout=out_log, stderr=subprocess.STDOUT, env=env)


def warm_cases(dry_run):
    """What the later phases launch: the correctness cases (ours side) and the bench's target cases."""
    from . import gpu_check
    cases = list(gpu_check.target_cases(dry_run))  # first: the timed phases need them most
    cases += [k for k in ((c.op, c.scale, c.batch, c.hw, str(c.dtype)[6:], c.train, c.channels_last)
                          for c in gpu_check.cases(dry_run)) if k not in cases]
    if dry_run:  # one cheap case (4 variants) checks the capture and the pool, in little of the dry run's time
        return [c for c in cases if c[0] == "scdown"][:1]
    return cases


def run_case(case):
    """Run ours on `case` once (forward, and backward in train); returns (case, seconds, status). The sweep and
    speed-of-light phases use it."""
    import torch
    from . import gpu_check
    op, scale, batch, hw, dtype, train, cl = case
    t0 = time.perf_counter()
    try:
        c = gpu_check.Case(op, scale, batch, tuple(hw), getattr(torch, dtype), train, cl)
        device = torch.device("cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda")
        _, _, ours, in_shapes = gpu_check.build_modules(c, device)
        xs = [x.to(c.dtype) for x in gpu_check.make_inputs(c, in_shapes, device, seed=0)]
        go = None
        if train:
            with torch.no_grad():
                out = ours(*xs)
            go = [torch.randn_like(o, dtype=torch.float32) for o in (out if isinstance(out, (list, tuple)) else [out])]
        gpu_check.run_module(ours, xs, go)
        if device.type == "cuda":
            torch.cuda.synchronize()
        status = "ok"
    except Exception as e:  # recorded: the correctness phase reports the same failure in detail
        status = f"error: {type(e).__name__}: {str(e)[:200]}"
    return case, time.perf_counter() - t0, status


def capture_case(case, recorder, gpu):
    """Record the launches of ours on `case` (forward, and backward in train) on fake CUDA tensors."""
    import torch
    from yolov10_kernels.capture import capture
    from . import gpu_check, ops
    op, scale, batch, hw, dtype, train, cl = case
    c = gpu_check.Case(op, scale, batch, tuple(hw), getattr(torch, dtype), train, cl)
    module, _, in_shapes = ops.op_module(op, scale)
    ours = ops.make_ours(op, module.train(train), "cuda", "train_full" if train else "infer")
    shapes = [tuple(x.shape) for x in gpu_check.make_inputs(c, in_shapes, "cpu", seed=0)]
    recorder.context = c.name
    capture(ours, shapes, c.dtype, train, cl, gpu, recorder=recorder)


# the bench phase's end-to-end rows on the GPU (bench/e2e.py with --quick --scales n,s): 640 px, bf16 (AMP in train),
# channels_last; (scale, batch, train)
E2E_CASES = [("n", 64, True), ("s", 64, True), ("n", 1, False), ("n", 32, False), ("s", 1, False), ("s", 32, False)]


def capture_e2e(scale, batch, train, recorder, gpu):
    """Record the launches of an accelerated model as bench/e2e.py runs it: a train step under AMP, or inference
    after model.fuse()."""
    import torch
    from yolov10_kernels import accelerate
    from yolov10_kernels.capture import capture
    from .ops import build_model
    model = accelerate(build_model(scale), backend="auto")
    if not train:
        model.fuse()
    recorder.context = f"e2e yolov10{scale} b{batch} {'train' if train else 'infer'}"
    capture(model, [(batch, 3, 640, 640)], torch.bfloat16, train, True, gpu, recorder=recorder, amp=train)


def warm_kernels(dry_run, workers, timeout_s):
    """In the child: capture every case, then compile the distinct variants (yolov10_kernels.warmup); a dict."""
    from yolov10_kernels.capture import Recorder
    from yolov10_kernels.warmup import compile_launches, resolve_target
    gpu, why = resolve_target(DRY_TARGET if dry_run else None)
    if why:
        return {"status": f"skipped: {why}"}
    t0, rec = time.perf_counter(), Recorder()
    for case in [] if dry_run else E2E_CASES:  # first: the timed phases need them most
        capture_e2e(*case, rec, gpu)
    cases = warm_cases(dry_run)
    for case in cases:
        capture_case(case, rec, gpu)
    capture_s = time.perf_counter() - t0
    summary = compile_launches(rec.launches, gpu.arch, workers, max(timeout_s - capture_s, 1))
    left = summary.variants - summary.compiled - len(summary.failed)
    status = "ok" if not summary.failed and not left else \
        f"{len(summary.failed)} failed, {left} not compiled at the phase time budget"
    return {"status": status, "cases": len(cases), "capture_s": capture_s, **dataclasses.asdict(summary)}


_CHILD = ("import json, sys; from bench.warm import warm_kernels; "
          "print(json.dumps(warm_kernels(*json.loads(sys.argv[1])), default=str), flush=True)")


def _warm_kernels_child(dry_run, workers, timeout_s):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps([dry_run, workers, timeout_s])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait(child, timeout_s):
    """The warm-up child's summary (a dict), waiting at most timeout_s; the child never outlives the call."""
    try:  # the child stops waiting for compiles at the budget it was given; this is the backstop
        out, err = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
    finally:  # a SIGTERM of the caller must not leave the child compiling into what comes next
        if child.poll() is None:
            child.kill()
    try:  # the summary line comes before the child waits for its last compiles (it may be killed there)
        return json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"status": f"fail: rc {child.returncode}", "log_tail": err[-4000:]}


def warm_up(timeout_s, workers=None):
    """Compile every kernel variant the GPU benchmarks launch (see the module docstring) before any timing, in a
    child process; returns its summary. `python -m bench` calls it first on CUDA."""
    return _wait(_warm_kernels_child(False, workers or max(1, (os.cpu_count() or 2) - 1), timeout_s), timeout_s + 5)


def run(session, f):
    env = dict(os.environ, MAX_JOBS=str(os.cpu_count() or 4))
    # the build's output is kept in build.json (its tail): $OUT takes at most 8 files
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.time()
        build = _build_extension(log, env)
        workers = DRY_WORKERS if session.dry_run else GPU_WORKERS
        session.log(f"  building the extension; compiling the kernel variants in {workers} workers")
        warm = _warm_kernels_child(session.dry_run, workers, max(session.left() - 10, 1))
        f.add({"what": "warm", "seconds": time.time() - t0, **_wait(warm, max(session.left(), 1))})
        try:
            rc = build.wait(timeout=max(session.left(), 1))
        except subprocess.TimeoutExpired:
            build.kill()
            rc = "timeout"
        log.seek(0)
        f.add({"what": "extension", "status": "ok" if rc == 0 else f"fail: rc {rc}", "seconds": time.time() - t0,
               "log_tail": log.read()[-4000:]})
