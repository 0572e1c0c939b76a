"""Compile one recorded Triton launch (bench/static_capture.Launch) for a GPU profile's target on the CPU and read
its resources.

Triton's driver is replaced (yolov10_kernels.warmup.install_driver) by one that targets the profile's compute
capability (GPUTarget("cuda", arch, 32)); Triton lowers to PTX and its bundled ptxas (`-v --gpu-name=<target>`,
sm_75 ... sm_90a, sm_100a, sm_120a) reports registers, spill stores/loads and static shared memory. Triton's own
metadata gives the shared memory it allocates (the number that must fit the profile's smem_per_block). The MMA
kind is read off the PTX: wgmma (Hopper warpgroup MMA), tcgen05 (Blackwell), mma (mma.sync, Ampere-style) or fma
(no tensor cores). Run in a process without TRITON_INTERPRET."""
import os
import re
import subprocess
import tempfile
import time



def ptxas_path(target="sm_90a"):
    """The ptxas Triton itself assembles `target` with: its bundled one, or for sm_100 and later the Blackwell
    build it ships beside it (the PTX it emits there has a newer .version)."""
    from triton.backends.nvidia.compiler import get_ptxas
    return get_ptxas(int(target[3:].rstrip("a"))).path


def ptxas_usage(ptx, target="sm_90a"):
    """{regs, spill_bytes, ptxas_smem, ptxas_rc} from `ptxas -v --gpu-name=<target>`."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas_path(target), "-v", f"--gpu-name={target}", src, "-o", os.path.join(d, "k.o")],
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
    if "tcgen05.mma" in ptx:
        return "tcgen05"
    if "mma.sync" in ptx:
        return "mma"
    return "fma"


def compile_variant(module, name, args, constexprs, config, gpu="H200"):
    """Compile kernel `module.name` with recorded args/constexprs and one config for `gpu` (a yolov10_kernels.gpus
    profile or name; this process's driver must target its arch: worker_init / install_driver); returns the
    resource dict, `launchable` judged against that profile's limits."""
    from yolov10_kernels import gpus
    from yolov10_kernels.warmup import compile_kernel
    profile = gpus.resolve(gpu)
    t0 = time.time()
    try:
        k = compile_kernel(module, name, args, constexprs, config)
    except Exception as e:  # a config that does not compile is recorded, not fatal
        return {"error": f"{type(e).__name__}: {str(e)[-600:]}", "compile_s": round(time.time() - t0, 2),
                "launchable": False}
    ptx = k.asm["ptx"]
    out = {"compile_s": round(time.time() - t0, 2), "smem_bytes": int(k.metadata.shared), "mma": mma_kind(ptx)}
    out.update(ptxas_usage(ptx, profile.target))
    out["launchable"] = launchable(out, profile)
    return out


def launchable(res, profile):
    """Whether a compiled variant (compile_variant's dict) can launch on `profile`: it compiled, ptxas accepted it,
    and its shared memory and registers are within the profile's limits."""
    return ("error" not in res and res.get("ptxas_rc") == 0 and res["smem_bytes"] <= profile.smem_per_block
            and (res.get("regs") or 0) <= profile.max_regs_per_thread)


def worker_init(arch=90):
    os.environ.pop("TRITON_INTERPRET", None)
    from yolov10_kernels.warmup import install_driver
    install_driver(arch)


def compile_job(job):
    """Pool entry point: job = (key, gpu, module, name, args, constexprs, config), in a worker whose driver
    targets gpu's arch (worker_init(arch): Triton binds a kernel to the target of its first compile in a process,
    so a pool serves one arch)."""
    key, gpu, *rest = job
    return key, compile_variant(*rest, gpu=gpu)
