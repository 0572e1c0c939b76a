"""Checkpoint I/O. Official YOLOv10 checkpoints pickle whole ultralytics model objects; they are read here
without ultralytics through a restricted unpickler that turns those classes into inert stand-ins and
keeps only tensors and the model config."""
import _compat_pickle
import importlib
import os
import pickle
import tempfile
import types
from collections import OrderedDict
from pathlib import Path

import torch

from .model import SCALES, YOLOv10, resolve_cfg

FORMAT = "yolov10-kernels"


class _StandIn:
    """Replaces any pickled ultralytics / torch.nn object: remembers its state, runs no code."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slots state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)

    def __call__(self, *args, **kwargs):  # stand-ins for callables such as activation functions
        return None


def _stand_in_class(module, name):
    return type(name, (_StandIn,), {"__module__": f"standin.{module}"})


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("types", "SimpleNamespace"): types.SimpleNamespace,
}
_STAND_IN_PREFIXES = ("ultralytics.", "torch.nn.modules.", "__main__", "models.", "utils.")
_NUMPY_PREFIXES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy")


class _Refused(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol-2 pickles use Python 2 names
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstruct
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch" and name.endswith("Storage"):
            return getattr(torch, name)
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module.startswith(_NUMPY_PREFIXES) and name in ("_reconstruct", "scalar", "ndarray", "dtype") \
                or module.startswith("numpy.dtypes"):
            return getattr(importlib.import_module(module), name)
        if module.startswith(_STAND_IN_PREFIXES) or module in ("pathlib", "argparse"):
            return _stand_in_class(module, name)
        raise _Refused(f"checkpoint refers to {module}.{name}, which is not allowed to load")


def _reconstruct(cls, base, state):
    if base is object:
        return cls.__new__(cls) if issubclass(cls, _StandIn) else object.__new__(cls)
    return base.__new__(cls, state)


_restricted_pickle = types.ModuleType("yolov10_restricted_pickle")
_restricted_pickle.Unpickler = _RestrictedUnpickler
_restricted_pickle.load = pickle.load
_restricted_pickle.__name__ = "yolov10_restricted_pickle"


def _module_state_dict(obj, prefix=""):
    """Flatten a pickled nn.Module (real or stand-in) into a state_dict, skipping non-persistent buffers."""
    out = OrderedDict()
    d = obj.__dict__
    for name, p in (d.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p.detach() if isinstance(p, torch.Tensor) else p
    skip = set(d.get("_non_persistent_buffers_set") or ())
    for name, b in (d.get("_buffers") or {}).items():
        if b is not None and name not in skip:
            out[prefix + name] = b
    for name, child in (d.get("_modules") or {}).items():
        if child is not None:
            out.update(_module_state_dict(child, f"{prefix}{name}."))
    return out


def _read(path, map_location):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, pickle_module=_restricted_pickle, weights_only=False)
    except _Refused as e:
        raise ValueError(f"{path} cannot be loaded as a YOLOv10 checkpoint: {e}") from None
    except Exception as e:  # not a torch file at all: zip/pickle errors of many kinds
        raise ValueError(f"{path} is not a YOLOv10 checkpoint (torch.load failed: {type(e).__name__}: {e})") from None


def _cfg_from_state_dict(sd, path):
    """Infer (scale, nc) of a bare state_dict by matching parameter shapes against each scale."""
    key = "model.23.cv3.0.2.weight" if "model.23.cv3.0.2.weight" in sd else "model.23.one2one_cv3.0.2.weight"
    if key not in sd:
        raise ValueError(f"{path} does not look like a YOLOv10 state_dict (no {key})")
    nc = sd[key].shape[0]
    for s in SCALES:
        with torch.device("meta"):
            ref = YOLOv10(f"yolov10{s}", nc=nc)
        o2m = _one2many_prefixes(ref)
        if all(k in sd and sd[k].shape == v.shape for k, v in ref.state_dict().items() if not k.startswith(o2m)):
            return f"yolov10{s}", nc
    raise ValueError(f"{path}: the state_dict's shapes match none of the YOLOv10 scales {SCALES}")


def _one2many_prefixes(model):
    """State-dict key prefixes of the one-to-many head (absent from checkpoints saved after fuse())."""
    head = f"model.{len(model.model) - 1}."
    return head + "cv2.", head + "cv3."


def _check_requested(found_cfg, found_nc, cfg, nc, path):
    diffs = []
    if cfg is not None:
        want = resolve_cfg(cfg)["scale"]
        have = resolve_cfg(found_cfg)["scale"]
        if want != have:
            diffs.append(f"scale: checkpoint is yolov10{have}, requested yolov10{want}")
    if nc is not None and int(nc) != found_nc:
        diffs.append(f"class count: checkpoint has nc={found_nc}, requested nc={nc}")
    if diffs:
        raise ValueError(f"{path} does not match the requested model: " + "; ".join(diffs))


def load_checkpoint(path, cfg=None, nc=None, map_location="cpu", use_ema=True):
    """Load a model from an official YOLOv10 checkpoint, a plain state_dict file, or this package's own
    checkpoint. `cfg`/`nc`, when given, must match the checkpoint (a clear error says what differs)."""
    ckpt = _read(path, map_location)
    names = None
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:  # ours
        found_cfg, sd, names = ckpt["cfg"], ckpt["ema"] if use_ema and ckpt.get("ema") else ckpt["model"], ckpt.get("names")
        found_nc = found_cfg["nc"]
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("ema") or ckpt.get("model"), _StandIn):  # official
        obj = ckpt.get("ema") if use_ema and isinstance(ckpt.get("ema"), _StandIn) else ckpt["model"]
        ycfg = getattr(obj, "yaml", None)
        if not isinstance(ycfg, dict) or "backbone" not in ycfg:
            raise ValueError(f"{path}: the pickled model carries no YOLOv10 config")
        found_cfg = {k: ycfg[k] for k in ("nc", "scales", "backbone", "head") if k in ycfg}
        found_cfg["scale"] = ycfg.get("scale") or next(iter(ycfg["scales"]))
        found_nc = int(ycfg["nc"])
        sd = _module_state_dict(obj)
        names = getattr(obj, "names", None)
        if not any(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ValueError(f"{path}: the pickled model holds no tensors")
    elif isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):  # state_dict
        sd = ckpt
        found_cfg, found_nc = _cfg_from_state_dict(sd, path)
    else:
        raise ValueError(f"{path} is not a YOLOv10 checkpoint (found {type(ckpt).__name__} "
                         f"with keys {list(ckpt)[:8] if isinstance(ckpt, dict) else '-'})")
    _check_requested(found_cfg, found_nc, cfg, nc, path)
    model = YOLOv10(found_cfg, nc=found_nc)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    only_o2m_missing = bool(missing) and all(k.startswith(_one2many_prefixes(model)) for k in missing)
    if unexpected or (missing and not only_o2m_missing):
        raise ValueError(f"{path}: weights do not fit {model.cfg_name} (nc={found_nc}): "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    if only_o2m_missing:  # saved without the one-to-many head (after fuse()): inference only
        del model.head.cv2, model.head.cv3
    if names:
        model.names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
    return model


def checkpoint_imgsz(ckpt_or_path, default=640):
    """The image size a checkpoint was trained at: ours keep the trainer's `args`, official ones
    `train_args`; `default` for a bare state_dict or a checkpoint that records none."""
    ckpt = ckpt_or_path if isinstance(ckpt_or_path, dict) else _read(ckpt_or_path, "cpu")
    for key in ("args", "train_args"):
        args = ckpt.get(key)
        imgsz = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
        if isinstance(imgsz, (list, tuple)):  # ultralytics accepts [h, w]; the package runs square inputs
            imgsz = max(imgsz)
        if imgsz:
            return int(imgsz)
    return default


def save_checkpoint(path, model, **extra):
    """Write this package's checkpoint atomically (temp file + rename), so a kill mid-write keeps the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"format": FORMAT, "cfg": model.yaml, "names": model.names, "model": model.state_dict(), **extra}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(ckpt, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
