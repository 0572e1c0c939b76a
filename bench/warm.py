"""Build phase of the GPU session: the C++/CUDA extension (ninja, MAX_JOBS parallel) and, at the same time,
every Triton kernel variant that the correctness, sweep and bench phases will launch, compiled (and
autotuned) by running each case once in a pool of worker processes. Triton's on-disk cache then serves the
later phases, so no timing window pays for a compilation."""
import concurrent.futures as cf
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time

GPU_WORKERS = 14  # of the GPU machine's 16 cores; the extension build takes the others
DRY_WORKERS = 2


def _build_extension(out_log, env):
    """Load (JIT-build if needed) the assignment extension in a child process writing to out_log."""
    code = ("import sys, bench.assign as a; dev = sys.argv[1]; ok, how = a.op_status(dev); "
            "print('extension', dev, ok, how, flush=True); sys.exit(0 if ok else 1)")
    dev = "cpu" if env.get("TRITON_INTERPRET") == "1" else "cuda"
    return subprocess.Popen([sys.executable, "-c", code, dev], stdout=out_log, stderr=subprocess.STDOUT, env=env)


def warm_cases(dry_run):
    """What the later phases launch: the correctness cases (ours side) and the bench's target cases."""
    from . import gpu_check
    cases = [(c.op, c.scale, c.batch, c.hw, str(c.dtype)[6:], c.train, c.channels_last)
             for c in gpu_check.cases(dry_run)]
    cases += [k for k in gpu_check.target_cases(dry_run) if k not in cases]
    if dry_run:  # the interpreter compiles nothing: two cheap cases check the pool itself
        return [c for c in cases if c[0] == "scdown"][:DRY_WORKERS]
    return cases


def run_case(case):
    """In a worker: run ours on `case` once (forward, and backward in train); returns (case, seconds, status)."""
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


def run(session, f):
    env = dict(os.environ, MAX_JOBS=str(os.cpu_count() or 4))
    # the build's output is kept in build.json (its tail): $OUT takes at most 8 files
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.time()
        build = _build_extension(log, env)
        cases = warm_cases(session.dry_run)
        workers = DRY_WORKERS if session.dry_run else GPU_WORKERS
        session.log(f"  building the extension; warming {len(cases)} kernel cases in {workers} workers")
        # spawn: CUDA cannot be re-initialised in a forked child
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(run_case, c) for c in cases]
            try:
                for fut in cf.as_completed(futures, timeout=max(session.left(), 1)):
                    case, secs, status = fut.result()
                    f.add({"what": "warm", "case": list(case), "seconds": secs, "status": status})
            except cf.TimeoutError:
                f.add({"what": "warm", "status": f"skipped: {sum(not x.done() for x in futures)} cases left at "
                                                 f"the phase time budget"})
                for fut in futures:
                    fut.cancel()
        try:
            rc = build.wait(timeout=max(session.left(), 1))
        except subprocess.TimeoutExpired:
            build.kill()
            rc = "timeout"
        log.seek(0)
        f.add({"what": "extension", "status": "ok" if rc == 0 else f"fail: rc {rc}", "seconds": time.time() - t0,
               "log_tail": log.read()[-4000:]})
