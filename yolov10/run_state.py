"""What a training run keeps besides the weights: its run directory, the checkpoint to resume from, and the
random-number-generator states that make a resumed run repeat an uninterrupted one."""
import random
from pathlib import Path

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state", "increment_dir", "find_last", "load_train_state"]


def rng_state():
    """torch / numpy / random / CUDA generator states, numpy's as plain lists so that
    torch.load(weights_only=True) reads them back."""
    return {"torch": torch.get_rng_state(), "numpy": [x.tolist() if isinstance(x, np.ndarray) else x
                                                      for x in np.random.get_state()],
            "random": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    if not state:
        return
    torch.set_rng_state(state["torch"])
    s = state["numpy"]
    np.random.set_state((s[0], np.asarray(s[1], dtype=np.uint32), *s[2:]))
    r = state["random"]
    random.setstate((r[0], tuple(r[1]), r[2]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def increment_dir(base):
    """base, else base2, base3, ...: the first that does not exist, so a new run never writes into an old one."""
    base = Path(base)
    if not base.exists():
        return base
    for n in range(2, 10_000):
        p = base.with_name(f"{base.name}{n}")
        if not p.exists():
            return p
    raise RuntimeError(f"too many runs under {base.parent}")


def find_last(resume):
    """--resume argument -> last.pt path ('' / True = the newest runs/**/last.pt)."""
    if resume in (True, "", "True", "latest"):
        cands = sorted(Path("runs").glob("**/last.pt"), key=lambda p: p.stat().st_mtime)
        if not cands:
            raise FileNotFoundError("--resume: no runs/**/last.pt found; pass the checkpoint path")
        return cands[-1]
    p = Path(resume)
    if p.is_dir():
        p = p / "weights" / "last.pt" if (p / "weights" / "last.pt").is_file() else p / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(f"--resume: {p} does not exist")
    return p


def load_train_state(path):
    """Read a checkpoint written by this trainer (tensors, numbers and strings only)."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or "optimizer" not in ck or "args" not in ck:
        raise ValueError(f"{path} is not a training checkpoint of `yolov10 train` (no optimizer/args to resume)")
    return ck
