"""Compile one recorded Triton launch (bench/static_capture.Launch) for sm_90a on the CPU and read its resources.

A fake Triton driver targets GPUTarget("cuda", 90, 32); Triton lowers to PTX and its bundled ptxas (`-v`) reports
registers, spill stores/loads and static shared memory. Triton's own metadata gives the shared memory it allocates
(the number that must fit the 227 KB per block of sm_90). The MMA kind is read off the PTX: wgmma (Hopper
warpgroup MMA), mma (mma.sync, Ampere-style) or fma (no tensor cores). Run in a process without TRITON_INTERPRET."""
import importlib
import os
import re
import subprocess
import tempfile
import time

SMEM_LIMIT = 227 * 1024  # sm_90 shared memory per block (opt-in maximum)
MAX_REGS = 255


def install_fake_driver():
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver

    class FakeDriver:
        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

    driver.set_active(FakeDriver())


def ptxas_path():
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def ptxas_usage(ptx):
    """{regs, spill_bytes, ptxas_smem, ptxas_rc} from `ptxas -v --gpu-name=sm_90a`."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas_path(), "-v", "--gpu-name=sm_90a", src, "-o", os.path.join(d, "k.o")],
                           capture_output=True, text=True)
    log = r.stderr + r.stdout
    out = {"ptxas_rc": r.returncode}
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    out["spill_bytes"] = int(m.group(1)) + int(m.group(2)) if m else None
    m = re.search(r"Used (\d+) registers", log)
    out["regs"] = int(m.group(1)) if m else None
    m = re.search(r"(\d+) bytes smem", log)
    out["ptxas_smem"] = int(m.group(1)) if m else 0
    if r.returncode:
        out["error"] = log[-600:]
    return out


def mma_kind(ptx):
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if "mma.sync" in ptx:
        return "mma"
    return "fma"


def _value(v):
    """A recorded argument back as something Triton can specialise on: tensors as small CPU tensors of their
    dtype (compilation reads only the dtype and the pointer alignment), tl dtypes as tl dtypes."""
    import torch
    import triton.language as tl
    if isinstance(v, (tuple, list)) and v and v[0] == "tensor":
        return torch.empty(64, dtype=getattr(torch, v[1]))
    if isinstance(v, (tuple, list)) and v and v[0] == "tl":
        return {str(t): t for t in (tl.float16, tl.bfloat16, tl.float32, tl.float64)}[v[1]]
    return v


def compile_variant(module, name, args, constexprs, config):
    """Compile kernel `module.name` with recorded args/constexprs and one config; returns the resource dict."""
    from triton.runtime.jit import JITFunction
    fn = getattr(importlib.import_module(module), name)
    while not isinstance(fn, JITFunction):  # an autotuner's (or heuristics') kernel
        fn = fn.fn
    params = [p.name for p in fn.params]
    meta = {k: v for k, v in config.items() if k not in ("num_warps", "num_stages")}
    kwargs = {**{k: _value(v) for k, v in constexprs.items()}, **meta}
    pos = [_value(args[p]) for p in params if p in args]
    t0 = time.time()
    try:
        k = fn.run(*pos, grid=(1,), warmup=True, num_warps=config["num_warps"], num_stages=config["num_stages"],
                   **kwargs)
    except Exception as e:  # a config that does not compile is recorded, not fatal
        return {"error": f"{type(e).__name__}: {str(e)[-600:]}", "compile_s": round(time.time() - t0, 2),
                "launchable": False}
    ptx = k.asm["ptx"]
    out = {"compile_s": round(time.time() - t0, 2), "smem_bytes": int(k.metadata.shared), "mma": mma_kind(ptx)}
    out.update(ptxas_usage(ptx))
    out["launchable"] = (out["ptxas_rc"] == 0 and out["smem_bytes"] <= SMEM_LIMIT
                         and (out["regs"] or 0) <= MAX_REGS)
    return out


def worker_init():
    os.environ.pop("TRITON_INTERPRET", None)
    install_fake_driver()


def compile_job(job):
    """Pool entry point: job = (key, module, name, args, constexprs, config)."""
    key, *rest = job
    return key, compile_variant(*rest)
