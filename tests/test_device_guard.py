"""Every Triton launch runs with its tensors' CUDA device made current (Triton launches on the current device: a
model on cuda:1 while the current device is 0 would launch on the wrong one). Checked without a GPU: the launches
of yolov10n (eval, and train forward + backward) are captured on fake tensors of CUDA device 1 while the current
device stays 0, and each launch records the device that torch.cuda.device made current around it."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import torch

from yolov10_kernels.capture import Recorder
from yolov10_kernels.ops.utils import on_device

ROOT = Path(__file__).resolve().parent.parent

_HARNESS = """
import json, os
os.environ.pop("TRITON_INTERPRET", None)
import torch
from yolov10.model import YOLOv10
from yolov10_kernels import accelerate
from yolov10_kernels.capture import capture
model = accelerate(YOLOv10("yolov10n"), backend="auto").eval()
out = {}
for mode, train in (("eval", False), ("train", True)):
    launches = capture(model, [(2, 3, 64, 96)], torch.float32, train=train, device=1)
    out[mode] = {"kernels": sorted({ln.kernel for ln in launches}),
                 "devices": sorted({str(ln.device) for ln in launches})}
print(json.dumps(out))
"""

# every launcher of the package: the eval chains and attention, and in training the convs, the BN ops, the merges
EVAL_KERNELS = {"_dw_pw_kernel", "_dw_pw_pw_kernel", "_pw_dw_kernel", "_dw_pw_dw_kernel", "_psa_fwd_kernel",
                "_v_norm_kernel"}
TRAIN_KERNELS = {"_dw_conv_kernel", "_dw_grad_y_kernel", "_dw_bwd_kernel", "_repvgg_merge_kernel", "_pw_fwd_kernel",
                 "_pw_bwd_fused_kernel", "_pw_dgrad_kernel", "_pw_wgrad_kernel", "_bn_affine_kernel",
                 "_bn_affine_bwd_kernel", "_channel_stats_kernel", "_channel_stats_grad_kernel",
                 "_merge_stats_kernel", "_sum_partials_kernel", "_psa_fwd_kernel", "_psa_bwd_pre_kernel",
                 "_psa_bwd_dkdv_kernel", "_psa_bwd_dq_kernel", "_psa_sums_kernel", "_v_norm_kernel"}


def test_every_launch_runs_on_its_tensors_device():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-c", _HARNESS], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert EVAL_KERNELS <= set(got["eval"]["kernels"]), sorted(EVAL_KERNELS - set(got["eval"]["kernels"]))
    assert TRAIN_KERNELS <= set(got["train"]["kernels"]), sorted(TRAIN_KERNELS - set(got["train"]["kernels"]))
    for mode in ("eval", "train"):
        assert got[mode]["devices"] == ["cuda:1"], (mode, got[mode]["devices"])


def test_on_device_makes_a_cuda_tensors_device_current_and_nothing_else(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(torch.cuda, "device", rec.on_device)
    for t in (torch.empty(1), torch.empty(1, device="meta")):
        with on_device(t):
            assert rec.device is None
    with on_device(types.SimpleNamespace(device=torch.device("cuda", 3))):  # on_device reads only .device
        assert rec.device == torch.device("cuda", 3)
    assert rec.device is None
