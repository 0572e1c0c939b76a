"""Process-level helpers shared by the trainer, the validator and the predictor: device selection, the
torchrun (DDP) environment, rank-0 logging, seeding, the CPU memory format, and the machine calibration
printed next to training times."""
import os
import platform
import random
import time

import numpy as np
import torch

__all__ = ["select_device", "dist_env", "is_main", "log", "seed_everything", "epoch_seed", "memory_format",
           "cpu_memory_format", "contiguous_state_dict", "machine_summary"]


def select_device(device="", local_rank=-1):
    """'' / None = cuda:0 (or cuda:LOCAL_RANK under torchrun) when CUDA is there, else cpu; 'cpu'; '0'; 'cuda:1'."""
    device = "" if device is None else str(device).strip().lower()
    if device in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", max(local_rank, 0))
        return torch.device("cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.isdigit() or "," in device:
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {device} asks for a CUDA device, but CUDA is not available here "
                               f"(use --device cpu)")
        ids = [int(x) for x in device.split(",") if x.strip()]
        return torch.device("cuda", ids[local_rank] if 0 <= local_rank < len(ids) else ids[0])
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: CUDA is not available here (use --device cpu)")
    return torch.device(device)


def dist_env():
    """(rank, local_rank, world_size) from the torchrun environment; (-1, -1, 1) for a single process."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"])), world
    return -1, -1, 1


def is_main(rank):
    return rank in (-1, 0)


def log(msg, rank=-1):
    if is_main(rank):
        print(msg, flush=True)


def seed_everything(seed, deterministic=True):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def epoch_seed(seed, epoch, rank):
    """A per-(seed, epoch, rank) seed: a resumed run re-seeds each epoch exactly as an uninterrupted one."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + max(int(rank), 0) * 104_729) % 2**31


def memory_format(device):
    """channels_last on the CPU, where oneDNN's convolutions run it ~1.3x faster than NCHW for yolov10n
    (train step and eval at batch 16, 256 px); the default layout elsewhere."""
    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


def cpu_memory_format(model, x):
    """Put ``model``'s 4-D weights (in place, same values) and the image batch ``x`` (B, 3, H, W) into the
    memory format that is fastest on ``x``'s device; returns ``x`` in that format. On the CPU that is
    channels_last; elsewhere both are left as they are."""
    fmt = memory_format(x.device)
    if fmt is torch.contiguous_format:
        return x
    model.to(memory_format=fmt)
    return x.contiguous(memory_format=fmt)


def contiguous_state_dict(module):
    """``module.state_dict()`` copied into the standard contiguous layout, so that a checkpoint written from a
    channels_last model holds the same tensors as one written from an NCHW model."""
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in module.state_dict().items()}


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _best_rate(fn, work, repeats=5):
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    return work / best


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def machine_summary():
    """'<cpu model>, <n> threads, calibration: matmul X GFLOP/s, memcpy Y GB/s': a ~0.2 s probe (fp32 512^3
    matmul on torch's threads, 64 MiB copy), so that run times from different or busy machines can be
    compared. The best of five repeats is kept."""
    n = 512
    a, b = torch.rand(n, n), torch.rand(n, n)
    gflops = _best_rate(lambda: torch.mm(a, b), 2 * n**3) / 1e9
    src = torch.empty(16 * 2**20, dtype=torch.float32)
    dst = torch.empty_like(src)
    gbs = _best_rate(lambda: dst.copy_(src), 2 * src.nbytes) / 1e9  # read + write
    return (f"{_cpu_model()}, {torch.get_num_threads()} threads, calibration: matmul {gflops:.0f} GFLOP/s, "
            f"memcpy {gbs:.1f} GB/s")
