"""The one allocation switch shared by every kernel launcher. With POISON on (the test suite turns it on;
YOLOV10_KERNELS_POISON=1 does so by hand) each buffer a launcher allocates starts as NaN, so an element a kernel
forgets to write (output, gradient, scratch or partial-statistics slot) shows up instead of passing by luck."""
import os

import torch

POISON = os.environ.get("YOLOV10_KERNELS_POISON", "0") == "1"


def is_fake(t):
    from torch._subclasses.fake_tensor import FakeTensor
    return isinstance(t, FakeTensor) or t.device.type == "meta"


def poison(t):
    """Fill a freshly allocated buffer with NaN when POISON is on; returns it."""
    return t.fill_(float("nan")) if POISON and not is_fake(t) and t.is_floating_point() else t
