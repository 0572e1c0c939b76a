"""Compile one recorded Triton launch (bench/static_capture.Launch) for sm_90a on the CPU and read its resources.

Triton's driver is replaced (yolov10_kernels.warmup.install_driver) by one that targets GPUTarget("cuda", 90, 32);
Triton lowers to PTX and its bundled ptxas (`-v`) reports registers, spill stores/loads and static shared memory. Triton's own metadata gives the shared memory it allocates
(the number that must fit the 227 KB per block of sm_90). The MMA kind is read off the PTX: wgmma (Hopper
warpgroup MMA), mma (mma.sync, Ampere-style) or fma (no tensor cores). Run in a process without TRITON_INTERPRET."""
import os
import re
import subprocess
import tempfile
import time

SMEM_LIMIT = 227 * 1024  # sm_90 shared memory per block (opt-in maximum)
MAX_REGS = 255


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


def compile_variant(module, name, args, constexprs, config):
    """Compile kernel `module.name` with recorded args/constexprs and one config; returns the resource dict."""
    from yolov10_kernels.warmup import compile_kernel
    t0 = time.time()
    try:
        k = compile_kernel(module, name, args, constexprs, config)
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
    from yolov10_kernels.warmup import install_driver
    install_driver(90)


def compile_job(job):
    """Pool entry point: job = (key, module, name, args, constexprs, config)."""
    key, *rest = job
    return key, compile_variant(*rest)
