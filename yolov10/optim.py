"""The official optimizer and learning-rate schedule.

- optimizer "auto": SGD(lr 0.01, momentum 0.9, nesterov) when the run has > 10000 iterations, else
  AdamW(lr = round(0.002 * 5 / (4 + nc), 6), betas (0.9, 0.999)); "auto" also sets warmup_bias_lr = 0. Three
  parameter groups, in the official order: pg0 biases (no decay), pg1 weights (decay), pg2 norm-layer
  weights (no decay).
- linear LR decay lf(e) = (1 - e / epochs) * (1 - lrf) + lrf per epoch, or a cosine from 1 to lrf.
"""
import math

import torch
import torch.nn as nn

__all__ = ["build_optimizer", "lr_lambda"]


def build_optimizer(model, name="auto", lr=0.01, momentum=0.937, decay=1e-5, iterations=1e5, nc=80, args=None):
    """The official build_optimizer. Returns (optimizer, resolved name, lr, momentum); with name 'auto' it sets
    args['warmup_bias_lr'] = 0 (as ultralytics does) when args is given."""
    g = [], [], []  # weights with decay, norm-layer weights, biases
    bn = tuple(v for k, v in nn.__dict__.items() if "Norm" in k)
    known = ("Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp", "SGD", "auto")
    name = {x.lower(): x for x in known}.get(str(name).lower(), name)
    if name == "auto":
        lr_fit = round(0.002 * 5 / (4 + nc), 6)
        name, lr, momentum = ("SGD", 0.01, 0.9) if iterations > 10000 else ("AdamW", lr_fit, 0.9)
        if args is not None:
            args["warmup_bias_lr"] = 0.0
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            fullname = f"{module_name}.{param_name}" if module_name else param_name
            if "bias" in fullname:
                g[2].append(param)
            elif isinstance(module, bn):
                g[1].append(param)
            else:
                g[0].append(param)
    if name in ("Adam", "Adamax", "AdamW", "NAdam", "RAdam"):
        optimizer = getattr(torch.optim, name)(g[2], lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    elif name == "RMSProp":
        optimizer = torch.optim.RMSprop(g[2], lr=lr, momentum=momentum)
    elif name == "SGD":
        optimizer = torch.optim.SGD(g[2], lr=lr, momentum=momentum, nesterov=True)
    else:
        raise ValueError(f"optimizer {name!r} not supported: use auto, SGD, Adam, AdamW, NAdam, RAdam, Adamax or RMSProp")
    optimizer.add_param_group({"params": g[0], "weight_decay": decay})
    optimizer.add_param_group({"params": g[1], "weight_decay": 0.0})
    return optimizer, name, lr, momentum


def lr_lambda(epochs, lrf, cos=False):
    if cos:
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda x: max(1 - x / epochs, 0) * (1.0 - lrf) + lrf
