"""Installs `yolov10` (reference model, trainer, CLI) and `yolov10_kernels` (fused ops).

The C++/CUDA extension in csrc/ is optional: it is built when torch is importable at build time
(use --no-build-isolation) and a compiler is there; YOLOV10_KERNELS_NO_EXT=1 skips it. When it is not
built, or its build fails, installation still succeeds with a message and the ops JIT-build on first use
or fall back to the reference implementation."""
import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _note(msg):
    print(f"[yolov10-kernels] {msg}")


def extension_config():
    if os.environ.get("YOLOV10_KERNELS_NO_EXT", "0") == "1":
        _note("YOLOV10_KERNELS_NO_EXT=1: not building the C++/CUDA extension")
        return [], {}
    cpp = sorted(glob.glob("csrc/*.cpp"))
    if not cpp:
        _note("no C++ sources in csrc/: nothing to build")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        _note("torch is not importable at build time (install with --no-build-isolation to build the "
              "extension now); the ops will JIT-build on first use instead")
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        failed = set()

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # a missing or broken compiler must not fail the install
                self.failed.add(ext.name)
                _note(f"building {ext.name} failed ({type(e).__name__}: {e}); the ops will JIT-build on "
                      f"first use or fall back to the reference implementation")

        def copy_extensions_to_source(self):  # editable/in-place installs: copy only what was built
            self.extensions = [e for e in self.extensions if e.name not in self.failed]
            super().copy_extensions_to_source()

        def get_outputs(self):
            return [o for e, o in zip(self.extensions, super().get_outputs()) if e.name not in self.failed]

    cu = sorted(glob.glob("csrc/cuda/*.cu"))
    use_cuda = bool(cu) and CUDA_HOME is not None and os.environ.get("YOLOV10_KERNELS_NO_CUDA", "0") != "1" \
        and (torch.cuda.is_available() or os.environ.get("FORCE_CUDA", "0") == "1")
    kind = CUDAExtension if use_cuda else CppExtension
    # no --use_fast_math: the assignment must reproduce the reference's float32 arithmetic exactly
    args = {"cxx": ["-O3", "-fopenmp"], "nvcc": ["-O3", "-std=c++20"]}
    if not use_cuda:
        args.pop("nvcc")
    _note(f"building yolov10_kernels._C with {kind.__name__} ({len(cpp)} C++, {len(cu) if use_cuda else 0} CUDA sources)")
    ext = kind("yolov10_kernels._C", cpp + (cu if use_cuda else []), extra_compile_args=args,
               extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = extension_config()

setup(
    name="yolov10-kernels",
    version="0.1.0",
    description="Fused Triton and C++/CUDA kernels for YOLOv10, with a pure-PyTorch reference model and trainer",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["yolov10", "yolov10.*", "yolov10_kernels", "yolov10_kernels.*", "bench", "bench.*"]),
    package_data={"yolov10": ["cfg/*.yaml"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.6,<2.15",
        "numpy>=1.23,<2.4",
        "pyyaml>=5.4",
        "opencv-python-headless>=4.6",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "pycocotools>=2.0.6",
    ],
    extras_require={
        "triton": ["triton>=3.2"],
        # ultralytics is a test oracle only (scripts/env.sh installs it with --no-deps; see README)
        "test": ["pytest>=7", "pytest-benchmark>=4", "polars", "psutil", "requests", "pillow",
                 "ultralytics-thop>=2.0", "scipy"],
        # `yolov10 export` / ONNX predict and benchmark rows; imported only there
        "export": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.1"],
    },
    entry_points={"console_scripts": ["yolov10=yolov10.cli:run",
                                      # ultralytics' `yolo` with patch_ultralytics() applied first
                                      "yolov10-kernels-yolo=yolov10_kernels.integrations.yolo:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
