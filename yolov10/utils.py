"""Process-level helpers shared by the trainer and the validator: device selection, the torchrun (DDP)
environment, rank-0 logging and seeding."""
import os
import random

import numpy as np
import torch

__all__ = ["select_device", "dist_env", "is_main", "log", "seed_everything", "epoch_seed"]


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
