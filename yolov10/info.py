"""Parameter and FLOP counts as the paper reports them (2 x conv MACs; attention matmuls not counted)."""
import copy

import torch
import torch.nn as nn


def model_info(model, imgsz=640, verbose=False):
    """Returns {"layers", "parameters", "gradients", "gflops"} at an imgsz x imgsz input. In train mode
    both heads are counted, in eval mode (and after fuse()) only the one-to-one head runs."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    params = sum(p.numel() for p in model.parameters())
    grads = sum(p.numel() for p in model.parameters() if p.requires_grad)
    probe = copy.deepcopy(model)  # the probe forward must not touch the model's BN statistics
    macs = []

    def hook(m, inp, out):
        macs.append(m.weight.numel() * out.shape[-2] * out.shape[-1] * (out.shape[0] if out.dim() == 4 else 1))

    for m in probe.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    p = next(model.parameters())
    s = 64  # probe at a small size and scale: every conv's output area grows with the input area
    with torch.no_grad():
        probe(torch.zeros(1, model.ch, s, s, dtype=p.dtype, device=p.device))
    gflops = 2 * sum(macs) * (h * w) / (s * s) / 1e9
    info = {"layers": len(list(model.modules())), "parameters": params, "gradients": grads, "gflops": gflops}
    if verbose:
        print(f"{model.cfg_name} summary{' (fused)' if model.is_fused else ''}: {info['layers']} layers, "
              f"{params:,} parameters, {grads:,} gradients, {gflops:.1f} GFLOPs at {h}x{w}")
    return info
