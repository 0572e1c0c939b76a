"""Which dataset a run uses: a data YAML, or the embedded synthetic dataset generated on first use."""
import os
import time
from pathlib import Path

from ..defaults import SYNTH_DATASET, uses_synth
from .dataset import load_data_yaml
from .synth import make_synthetic_dataset

__all__ = ["resolve_data", "synth_root"]


def synth_root():
    """Where the synthetic dataset lives: $YOLOV10_DATASETS/synth, default datasets/synth."""
    return Path(os.environ.get("YOLOV10_DATASETS", "datasets")) / "synth"


def resolve_data(data):
    """data.yaml path (or None = the embedded synthetic dataset, generated on first use) -> data dict with
    'train', 'val', 'names' ({i: name}), 'nc', 'yaml'."""
    if uses_synth(data):
        t0 = time.time()
        data = str(make_synthetic_dataset(synth_root(), **SYNTH_DATASET))  # reused when already there
        if time.time() - t0 > 2:
            print(f"synthetic dataset written to {synth_root()} ({time.time() - t0:.0f} s)", flush=True)
    d = dict(load_data_yaml(data))
    names = d["names"]
    d["names"] = dict(enumerate(names)) if isinstance(names, (list, tuple)) else {int(k): v for k, v in names.items()}
    d["nc"] = int(d.get("nc") or len(d["names"]))
    d["yaml"] = d.get("yaml_file", str(data))  # absolute: checkpoints remember it for `yolov10 val`
    return d
