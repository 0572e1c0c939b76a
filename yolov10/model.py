"""YOLOv10 detection model built from the official layer-list YAMLs."""
import copy
import math
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from .head import v10Detect
from .modules import (BN_EPS, BN_MOMENTUM, C2f, C2fCIB, CIB, PSA, SCDown, SPPF, Bottleneck, Concat, Conv,
                      RepVGGDW)

CFG_DIR = Path(__file__).parent / "cfg"
SCALES = ("n", "s", "m", "b", "l", "x")
_MODULES = {m.__name__: m for m in (Conv, C2f, C2fCIB, CIB, PSA, SCDown, SPPF, Bottleneck, Concat, v10Detect)}
_MODULES["nn.Upsample"] = nn.Upsample


def resolve_cfg(cfg):
    """Scale name ("yolov10n" or "n"), YAML path or dict -> (config dict, scale letter)."""
    if isinstance(cfg, dict):
        d = copy.deepcopy(cfg)
    else:
        name = str(cfg)
        stem = name[len("yolov10"):] if name.startswith("yolov10") else name
        if stem in SCALES:
            d = yaml.safe_load((CFG_DIR / f"yolov10{stem}.yaml").read_text())
            d["scale"] = stem
        elif name.endswith((".yaml", ".yml")):
            p = Path(name)
            if not p.is_file():
                raise FileNotFoundError(f"model config {p} does not exist")
            d = yaml.safe_load(p.read_text())
        else:
            raise ValueError(f"unknown YOLOv10 model {cfg!r}: expected one of "
                             f"{', '.join('yolov10' + s for s in SCALES)} or a .yaml path")
    if "scale" not in d:
        d["scale"] = next(iter(d["scales"])) if len(d.get("scales", {})) == 1 else "n"
    if d["scale"] not in d.get("scales", {}):
        raise ValueError(f"scale {d['scale']!r} not in the config's scales {list(d.get('scales', {}))}")
    return d


def _make_divisible(x, divisor=8):
    return math.ceil(x / divisor) * divisor


def parse_model(d, ch=3):
    depth, width, max_channels = d["scales"][d["scale"]]
    chs, layers, save = [ch], [], []
    for i, (f, n, m, args) in enumerate(d["backbone"] + d["head"]):
        if m not in _MODULES:
            raise ValueError(f"layer {i}: unknown module {m!r}")
        mod = _MODULES[m]
        args = [d["nc"] if a == "nc" else None if a == "None" else a for a in args]
        n = max(round(n * depth), 1) if n > 1 else n
        if mod in (Conv, C2f, C2fCIB, SPPF, SCDown, PSA):
            c1, c2 = chs[f], _make_divisible(min(args[0], max_channels) * width)
            args = [c1, c2, *args[1:]]
            if mod in (C2f, C2fCIB):
                args.insert(2, n)
                n = 1
        elif mod is Concat:
            c2 = sum(chs[x] for x in f)
        elif mod is v10Detect:
            args.append([chs[x] for x in f])
        else:
            c2 = chs[f]
        module = nn.Sequential(*(mod(*args) for _ in range(n))) if n > 1 else mod(*args)
        module.i, module.f = i, f
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(module)
        if i == 0:
            chs = []  # from here on chs[j] is layer j's output width
        chs.append(c2 if mod is not v10Detect else None)
    return nn.Sequential(*layers), sorted(set(save))


class YOLOv10(nn.Module):
    """YOLOv10 detector. Train mode returns {"one2many": [3 maps], "one2one": [3 maps]}; eval mode returns
    (B, 300, 6) detections (x1, y1, x2, y2 in input pixels, score, class) from the one-to-one head, no NMS."""

    def __init__(self, cfg="yolov10n", nc=None, ch=3):
        super().__init__()
        self.yaml = resolve_cfg(cfg)
        if nc is not None:
            self.yaml["nc"] = int(nc)
        if self.yaml["nc"] < 1:
            raise ValueError(f"nc must be >= 1, got {self.yaml['nc']}")
        self.nc, self.ch, self.scale = self.yaml["nc"], ch, self.yaml["scale"]
        self.model, self.save = parse_model(self.yaml, ch)
        self.names = {i: str(i) for i in range(self.nc)}
        head = self.model[-1]
        self.eval()  # strides come from a dry run that must not touch BN statistics
        with torch.no_grad():
            feats = self.features(torch.zeros(1, ch, 256, 256))
        self.train()
        head.stride = torch.tensor([256 / f.shape[-2] for f in feats], device="cpu")
        self.stride = head.stride
        head.bias_init()
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = BN_EPS, BN_MOMENTUM
            elif isinstance(m, nn.SiLU):
                m.inplace = True

    @property
    def head(self):
        return self.model[-1]

    @property
    def cfg_name(self):
        return f"yolov10{self.scale}"

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"expected a (B, {self.ch}, H, W) image tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.shape[1] != self.ch:
            raise ValueError(f"expected {self.ch} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})")
        s = int(self.stride.max())
        if x.shape[2] % s or x.shape[3] % s:
            raise ValueError(f"input height and width must be multiples of {s}, got {x.shape[2]}x{x.shape[3]}; "
                             f"letterbox the image first (yolov10.data.letterbox)")

    def features(self, x):
        """Run every layer but the head; returns the head's three input maps."""
        y = []
        for m in self.model[:-1]:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return [x if j == -1 else y[j] for j in self.head.f]

    def forward(self, x):
        self._check_input(x)
        return self.head(self.features(x))

    def fuse(self):
        """Fold every BN into its conv, merge RepVGGDW branches and drop the one-to-many head (inference only)."""
        for m in self.modules():
            if isinstance(m, RepVGGDW):
                m.fuse()
            elif isinstance(m, Conv):
                m.fuse_bn()
        head = self.head
        for name in ("cv2", "cv3"):
            if hasattr(head, name):
                delattr(head, name)
        head.fused = True
        return self.eval()

    @property
    def is_fused(self):
        return getattr(self.head, "fused", False)
