"""torchvision.ops.roi_align of the stub: importable, unusable."""


def RoIAlign(*args, **kwargs):
    raise RuntimeError("torchvision is a stub in this test (the installed wheel cannot be imported)")
