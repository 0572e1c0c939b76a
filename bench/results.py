"""Result files: <stem>.json (every row and the environment) and the same-named .md (bench/compare.py's
tables), rewritten whole after every section of a run."""
import datetime as _dt
import json
import math
from pathlib import Path

import torch

from .common import device_slug
from .compare import markdown


def result_paths(env, out_dir, stamp=None, stem=None):
    """<out_dir>/<stem>.{json,md}; stem defaults to <device>-<UTC date-time>."""
    stamp = stamp or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d-%H%M")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / (stem or f"{device_slug(env)}-{stamp}")
    return base.with_suffix(".json"), base.with_suffix(".md")


def _clean(v):
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else round(v, 6)
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, torch.Size):
        return list(v)
    if isinstance(v, (torch.dtype, torch.device, Path)):
        return str(v)
    return v


def write_results(result, out_dir, stamp=None, stem=None, md=True):
    """Write <device>-<stamp>.json and .md (or <stem>.json and .md; md False: the .json alone) under out_dir
    (stamp: UTC date and time, default now)."""
    jpath, mpath = result_paths(result["env"], out_dir, stamp, stem)
    result = _clean(result)
    write_atomic(jpath, json.dumps(result, indent=1) + "\n")
    if md:
        write_atomic(mpath, markdown(result))
    return jpath, mpath


def write_atomic(path, text):
    """A run killed while writing leaves the previous complete file, never a truncated one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
