"""The GPUs our users train on, as one table, and the profile of the device at hand: every per-GPU choice a
launcher makes (grid size, shared-memory budget, register ceiling, bf16 dots) reads a `GPUProfile` from here
instead of asking the driver or hard-coding one GPU's limits where it is used.

- `PROFILES`: named GPUs (T4 ... RTX5090) with the public figures of the CUDA C Programming Guide's "Technical
  Specifications per Compute Capability" and the vendors' data sheets (see shared/research/gpu_profiles.md).
- `device_profile(device)`: the profile a launch on `device` sizes itself by: a CUDA device's own limits, read
  from the driver once (so a GPU missing from the table works too), the interpreter's profile for CPU tensors
  (one program per grid: each costs Python time), or whatever `emulate()` / `capture.fake_gpu` installed.
- `emulate(gpu_or_programs)`: the CPU tests' GPU-grid mode: the interpreter's launches size their grids like a
  GPU's (a profile, or a plain program count) and take the GPU's code paths, so the multi-program paths a GPU
  always takes run on the CPU; `emulating()` says whether that mode is on.
- `resolve(name_or_target)`: "H100", "sm_86", "86" or 86 -> a profile (a bare target gets the table's first GPU of
  that capability, or a generic one)."""
import contextlib
import dataclasses
import re
from typing import Optional

import torch

# Resident programs per SM that hide memory latency in the persistent and split grids.
PROGRAMS_PER_SM = 4
# Without tensor-core dots a tile's accumulator and both dot operands live in registers: ptxas on sm_75 spills
# the pointwise and DW -> PW kernels above about this many of their elements per thread (bench.static).
FMA_LIVE = 44


@dataclasses.dataclass(frozen=True)
class GPUProfile:
    name: str
    arch: int  # compute capability as Triton's int: 75, 80, 86, 89, 90, 100, 120 (0: the interpreter)
    sms: int  # streaming multiprocessors
    smem_per_block: int  # bytes of shared memory one program may use (the opt-in maximum)
    smem_per_sm: int  # bytes of shared memory per SM
    bf16: bool  # bf16 tensor-core dots (compute capability 8.0+)
    regs_per_sm: int = 65536  # 32-bit registers per SM
    max_regs_per_thread: int = 255
    programs_per_sm: int = PROGRAMS_PER_SM

    @property
    def programs(self):
        """About how many programs fill the device: the split and persistent grids aim for this many."""
        return self.programs_per_sm * self.sms

    @property
    def target(self):
        """The ptxas / Triton target name: 'sm_90a' (architecture-specific features on 9.0, 10.0, 12.0)."""
        return f"sm_{self.arch}{'a' if self.arch >= 90 else ''}"

    @property
    def interpreter(self):
        return self.arch == 0

    @property
    def mma(self):
        """Whether Triton lowers tl.dot to tensor-core MMA here (sm_80+: mma.sync, wgmma, tcgen05). Below (T4)
        Triton 3.x runs dots on FMA units with both operands in registers, so tiles must be sized for registers."""
        return self.arch >= 80

    def limits(self):
        """The profile as a plain dict (the static report's `env`)."""
        return {**dataclasses.asdict(self), "target": self.target, "programs": self.programs}

    @property
    def mma_sync(self):
        """Whether those tensor-core dots are mma.sync (sm_80-89, sm_120: operand fragments in registers) rather
        than wgmma / tcgen05 (sm_90, sm_100: operands read from shared memory): some tiles sized on sm_90a spill
        there, which the autotuners' prunes drop."""
        return 80 <= self.arch < 90 or self.arch >= 120

    def fits(self, smem_bytes):
        """Whether a program needing `smem_bytes` of shared memory (smem_estimate) can launch here."""
        return smem_bytes <= self.smem_per_block

    def dots_fit_registers(self, live_elems, num_warps):
        """Whether a program whose dot accumulators and operands hold `live_elems` elements keeps them in
        registers without spilling: always with tensor-core dots (operands staged in shared memory or fragments
        ptxas sizes for), and up to FMA_LIVE elements per thread without (mma False: a T4)."""
        return self.mma or live_elems / (32 * num_warps) <= FMA_LIVE


def smem_estimate(stage_elems, elem_bytes, stages, resident_bytes=0):
    """The shared memory (bytes) a Triton program with one pipelined loop is predicted to allocate: `stages` buffers
    of what each iteration loads for its dots (`stage_elems` elements of `elem_bytes` bytes: both operand tiles),
    plus `resident_bytes` that stay for the whole loop (an operand made in registers - a prologue's activation, a
    transposed tile - staged through shared memory for the MMA, an epilogue's layout conversion). The real number
    is known only after compiling (metadata.shared); this is what launchers and autotuner prunes choose configs by
    before that, and bench.static compiles every chosen config for every profile and checks it against the
    profile's smem_per_block (the predictions are calibrated there, on the largest of sm_75 ... sm_120)."""
    return stages * stage_elems * elem_bytes + resident_bytes



_K = 1024
PROFILES = {p.name: p for p in (
    GPUProfile("T4", 75, 40, 64 * _K, 64 * _K, bf16=False),
    GPUProfile("A100", 80, 108, 163 * _K, 164 * _K, bf16=True),
    GPUProfile("RTX3090", 86, 82, 99 * _K, 100 * _K, bf16=True),
    GPUProfile("L4", 89, 58, 99 * _K, 100 * _K, bf16=True),
    GPUProfile("RTX4090", 89, 128, 99 * _K, 100 * _K, bf16=True),
    GPUProfile("H100", 90, 132, 227 * _K, 228 * _K, bf16=True),
    GPUProfile("H200", 90, 132, 227 * _K, 228 * _K, bf16=True),
    GPUProfile("B200", 100, 148, 227 * _K, 228 * _K, bf16=True),
    GPUProfile("RTX5090", 120, 170, 99 * _K, 128 * _K, bf16=True),
)}

# The Triton interpreter (CPU tensors): programs run one after another, so one program per grid by default; no
# shared-memory or register limit applies, and fp32 is the only exact dot (bf16 tl.dot is wrong there).
INTERPRETER = GPUProfile("interpreter", 0, 1, 1 << 30, 1 << 30, bf16=False, regs_per_sm=1 << 30,
                         max_regs_per_thread=1 << 30, programs_per_sm=1)

# The profiles in force: CUDA device index -> profile (filled from the driver on first use, or by
# capture.fake_gpu), and the interpreter's (replaced by emulate()). Plain dicts, not functools caches:
# torch.compile traces through their callers.
_cuda_profiles = {}
_cpu_profile = {"profile": INTERPRETER}


def from_driver(index):
    """The profile of CUDA device `index` as its driver reports it (the table's figures are not needed)."""
    p = torch.cuda.get_device_properties(index)
    return GPUProfile(
        name=p.name, arch=p.major * 10 + p.minor, sms=p.multi_processor_count,
        smem_per_block=getattr(p, "shared_memory_per_block_optin", 48 * _K),
        smem_per_sm=getattr(p, "shared_memory_per_multiprocessor", 48 * _K),
        bf16=(p.major, p.minor) >= (8, 0), regs_per_sm=getattr(p, "regs_per_multiprocessor", 65536))


def device_profile(device):
    """The GPUProfile that launches on `device` (a torch.device or a tensor's) size themselves by."""
    if device.type != "cuda":
        return _cpu_profile["profile"]
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _cuda_profiles:
        _cuda_profiles[index] = from_driver(index)
    return _cuda_profiles[index]


def resolve(gpu):
    """A GPUProfile from a profile, a table name ("H100", case-insensitive) or a compute capability ("sm_86",
    "sm_90a", "86", 86): the table's first GPU of that capability, else a generic one with the smallest
    shared memory of its generation."""
    if isinstance(gpu, GPUProfile):
        return gpu
    by_name = {k.lower(): v for k, v in PROFILES.items()}
    if isinstance(gpu, str) and gpu.lower() in by_name:
        return by_name[gpu.lower()]
    m = re.fullmatch(r"(?:sm_)?(\d{2,3})a?", str(gpu))
    if not m or isinstance(gpu, bool):
        raise ValueError(f"unknown GPU {gpu!r}: name one of {sorted(PROFILES)} or a compute capability such as "
                         "'sm_86' or 90")
    arch = int(m.group(1))
    for p in PROFILES.values():
        if p.arch == arch:
            return p
    return GPUProfile(f"sm_{arch}", arch, 80, 99 * _K if arch >= 86 else 48 * _K, 100 * _K, bf16=arch >= 80)


@contextlib.contextmanager
def emulate(gpu: Optional[object] = None, programs: Optional[int] = None):
    """Within: the interpreter's launches size their grids like `gpu`'s (a profile or name; its program count)
    or for exactly `programs` programs, and take the GPU's code paths where theirs differ (the depthwise convs'
    staged tiles); the kernels still run on the CPU with the interpreter's block sizes."""
    base = resolve(gpu) if gpu is not None else INTERPRETER
    total = programs if programs is not None else base.programs
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ValueError(f"programs must be a positive int, got {total!r}")
    old = _cpu_profile["profile"]
    _cpu_profile["profile"] = dataclasses.replace(INTERPRETER, name=f"interpreter as {base.name}", sms=total)
    try:
        yield _cpu_profile["profile"]
    finally:
        _cpu_profile["profile"] = old


def emulating():
    """Whether the interpreter's launches are emulating a GPU's grid (inside emulate())."""
    return _cpu_profile["profile"] is not INTERPRETER
