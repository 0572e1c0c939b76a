"""Loader of the C++/CUDA extension (yolov10_kernels._C). Placeholder until the assignment op lands."""


def extension_status():
    return {"cpp": (False, "the C++ extension has no ops yet"), "cuda": (False, "the CUDA extension has no ops yet")}
