"""The C++/CUDA task-aligned assignment op (csrc/) in one place: the extension loader, the fake (shape)
registration, the Python wrapper `task_aligned_assign` and `extension_status()`.

The op is defined by csrc/assign.cpp (TORCH_LIBRARY schema, CPU kernel) and csrc/cuda/assign.cu (CUDA kernel).

Order of attempts, once per process (`load()`):
1. the prebuilt module `yolov10_kernels._C` (setup.py builds it: `pip install --no-build-isolation -e .`),
   unless a source in csrc/ is newer than it (a stale in-tree build is skipped with a warning);
2. a JIT build with torch.utils.cpp_extension.load + ninja into a cache folder (about 40 s the first time,
   then loaded from the cache): $YOLOV10_KERNELS_BUILD_DIR, else ~/.cache/yolov10_kernels/<key>, where the
   key hashes the sources, flags and torch version. With a CUDA device (and CUDA_HOME) the CUDA source is
   built too; if that fails the CPU part is rebuilt alone. YOLOV10_KERNELS_NO_JIT=1 skips this step;
3. otherwise callers fall back to the reference implementation (one warning).
YOLOV10_KERNELS=off turns every custom kernel off.
"""
import hashlib
import importlib
import importlib.util
import os
import shutil
import threading
import warnings
from pathlib import Path

import torch

from .utils import NAMESPACE, kernels_disabled, op_name, warn_once

ASSIGN_OP = op_name("task_aligned_assign")
CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]
LD_FLAGS = ["-fopenmp"]
# no --use_fast_math: the assignment needs IEEE division/sqrt and libdevice pow/atan for parity
NVCC_FLAGS = ["-O3", "-std=c++20"]

_lock = threading.RLock()
_state = {"attempted": False, "ok": False, "how": "", "error": ""}


def _csrc_dir():
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "csrc", here.parents[1] / "csrc"):  # source checkout, or packaged
        if (cand / "assign.cpp").is_file():
            return cand
    return None


def _sources(with_cuda):
    d = _csrc_dir()
    if d is None:
        return [], []
    cpp = sorted(str(p) for p in d.glob("*.cpp"))
    cu = sorted(str(p) for p in (d / "cuda").glob("*.cu")) if with_cuda else []
    return cpp, cu


def op_registered(name=ASSIGN_OP, dispatch_key="CPU"):
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(name, dispatch_key)
    except RuntimeError:  # the op is not defined at all
        return False


def _prebuilt_spec():
    try:
        return importlib.util.find_spec(f"{NAMESPACE}._C")
    except (ImportError, ValueError):
        return None


def _prebuilt_is_stale(spec):
    """True when csrc/ sits next to the package (a source checkout) and a source is newer than the .so."""
    try:
        so_mtime = Path(spec.origin).stat().st_mtime
    except (OSError, TypeError):
        return False
    cpp, cu = _sources(True)
    return any(Path(p).stat().st_mtime > so_mtime + 1 for p in cpp + cu + _headers())


def _cuda_wanted():
    from torch.utils.cpp_extension import CUDA_HOME
    return torch.cuda.is_available() and CUDA_HOME is not None and os.environ.get("YOLOV10_KERNELS_NO_CUDA", "0") != "1"


def _headers():
    d = _csrc_dir()
    return sorted(str(p) for p in list(d.glob("*.h")) + list((d / "cuda").glob("*.cuh"))) if d is not None else []


def _build_dir(cpp, cu):
    h = hashlib.sha256()
    for p in cpp + cu + _headers():
        h.update(Path(p).name.encode())
        h.update(Path(p).read_bytes())
    h.update(" ".join(CXX_FLAGS + NVCC_FLAGS + [torch.__version__, str(torch.version.cuda)]).encode())
    key = h.hexdigest()[:16]
    root = os.environ.get("YOLOV10_KERNELS_BUILD_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "yolov10_kernels")
    d = os.path.join(root, f"{'cuda' if cu else 'cpu'}-{key}")
    return d, f"yolov10_kernels_jit_{'cuda' if cu else 'cpu'}_{key}"


def _jit_cached():
    """True when a JIT build of the current sources is in the cache (loading it takes a second)."""
    cpp, cu = _sources(_cuda_wanted())
    if not cpp:
        return False
    d, name = _build_dir(cpp, cu)
    return os.path.exists(os.path.join(d, f"{name}.so"))


def _jit_build(cpp, cu):
    from torch.utils.cpp_extension import load
    build_dir, name = _build_dir(cpp, cu)
    os.makedirs(build_dir, exist_ok=True)
    lib = os.path.join(build_dir, f"{name}.so")
    if not os.path.exists(lib):
        warnings.warn(
            f"yolov10_kernels: the C++{'/CUDA' if cu else ''} extension is not prebuilt (install with "
            f"`pip install --no-build-isolation -e .` to build it ahead); JIT-building it now with ninja into "
            f"{build_dir} (about 40 s{' plus the CUDA part' if cu else ''}, once; later runs load it from there)",
            RuntimeWarning, stacklevel=4)
    load(name=name, sources=cpp + cu, extra_cflags=CXX_FLAGS, extra_ldflags=LD_FLAGS,
         extra_cuda_cflags=NVCC_FLAGS, build_directory=build_dir, is_python_module=False, verbose=False)
    return f"JIT build in {build_dir}"


def _try_load():
    if op_registered():
        return True, "already registered"
    spec = _prebuilt_spec()
    stale_note = ""
    if spec is not None:
        if _prebuilt_is_stale(spec):
            stale_note = f"prebuilt {spec.origin} is older than csrc/ (skipped); "
            warnings.warn(f"yolov10_kernels: {spec.origin} is older than the sources in csrc/; ignoring it and "
                          f"JIT-building the current sources (reinstall to refresh the prebuilt module)",
                          RuntimeWarning, stacklevel=4)
        else:
            try:
                importlib.import_module(f"{NAMESPACE}._C")
                if op_registered():
                    return True, f"prebuilt {spec.origin}"
                stale_note = "prebuilt module registers no assignment op; "
            except Exception as e:  # ABI mismatch, missing symbol, ...
                stale_note = f"prebuilt module failed to load ({type(e).__name__}: {e}); "
    if os.environ.get("YOLOV10_KERNELS_NO_JIT", "0") == "1":
        return False, stale_note + "YOLOV10_KERNELS_NO_JIT=1 and no usable prebuilt module"
    from torch.utils.cpp_extension import is_ninja_available
    if not is_ninja_available():
        return False, stale_note + "no prebuilt module and ninja is not available for a JIT build"
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return False, stale_note + f"no prebuilt module and no C++ compiler ({cxx}) for a JIT build"
    cpp, cu = _sources(_cuda_wanted())
    if not cpp:
        return False, stale_note + "no prebuilt module and the csrc/ sources are not shipped with this install"
    errors = []
    for use_cu in ([cu, []] if cu else [[]]):
        try:
            how = _jit_build(cpp, use_cu)
            if op_registered():
                return True, stale_note + how + ("" if use_cu or not cu else
                                                  f" (CPU only: the CUDA build failed: {errors[-1]})")
        except Exception as e:  # compiler errors, missing headers, ...
            errors.append(f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}")
            if use_cu:
                warnings.warn(f"yolov10_kernels: building the CUDA part failed ({errors[-1]}); building the C++ "
                              f"(CPU) part alone", RuntimeWarning, stacklevel=4)
    return False, stale_note + "JIT build failed: " + " | ".join(errors)


def _register_fake():
    """Shapes and dtypes of the op for FakeTensor / torch.compile / opcheck (once the library is loaded).
    Trailing schema arguments (options added to the op) do not change them."""
    @torch.library.register_fake(ASSIGN_OP)
    def _(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk, num_classes, *options,
          **named_options):
        torch._check(pd_scores.dim() == 3 and gt_bboxes.dim() == 3)
        b, a = pd_scores.shape[0], pd_scores.shape[1]
        return (pd_scores.new_empty((b, a), dtype=torch.int64),
                pd_scores.new_empty((b, a, 4), dtype=torch.float32),
                pd_scores.new_empty((b, a, num_classes), dtype=torch.float32),
                pd_scores.new_empty((b, a), dtype=torch.bool),
                pd_scores.new_empty((b, a), dtype=torch.int64))


def load():
    """Load (or build) the extension and register its fake kernel, once per process. Returns (ok, how_or_why)."""
    if kernels_disabled():
        return False, "YOLOV10_KERNELS=off"
    with _lock:
        if not _state["attempted"]:
            _state["attempted"] = True
            ok, how = _try_load()
            if ok:
                _register_fake()
            _state.update(ok=ok, how=how if ok else "", error="" if ok else how)
        return _state["ok"], _state["how"] or _state["error"]


def warn_fallback(why):
    """One warning per process when a caller falls back to the reference implementation."""
    warn_once(("assign", "fallback"), f"yolov10_kernels: the fused assignment extension is unavailable ({why}); "
                                      f"using the reference TaskAlignedAssigner", stacklevel=5)


def has_kernel(device_type):
    """True when the loaded extension has a kernel for `device_type` tensors ("cpu" or "cuda")."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and op_registered(ASSIGN_OP, key)


# csrc/cuda/assign.cu's kMaxTopk: a block keeps each thread's top-k candidates in registers. The C++ (CPU) op has
# no such bound, but the op takes the same topk on both devices (one behaviour whatever the device);
# FusedTaskAlignedAssigner(backend="auto") runs the reference for a larger topk.
MAX_TOPK = 32


def unsupported(pd_scores, topk, num_classes):
    """Why the op cannot assign with these arguments (a clear message naming the problem), or "" when it can; the
    same on the CPU and the CUDA op."""
    if int(num_classes) < 1:
        return f"num_classes must be >= 1, got {num_classes} (a detector needs at least one class)"
    if int(topk) < 1 or int(topk) > MAX_TOPK:
        return f"topk must be in [1, {MAX_TOPK}] for the fused assignment op, got {topk}"
    if pd_scores.dim() != 3 or pd_scores.shape[-1] != int(num_classes) or pd_scores.shape[1] == 0:
        return (f"pd_scores must be (batch, anchors >= 1, num_classes={num_classes}), got "
                f"{tuple(pd_scores.shape)}")
    return ""


def task_aligned_assign(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk, num_classes,
                        alpha=0.5, beta=6.0, eps=1e-9, **options):
    """The op with the reference's input conventions (gt_labels / mask_gt may be (B, M, 1), any dtype); any
    further schema argument of the op goes through `options` by name. Returns (target_labels, target_bboxes
    float32, target_scores float32, fg_mask, target_gt_idx); needs M > 0 (M == 0 is the caller's case).
    Arguments `unsupported` rejects raise a ValueError saying why."""
    why = unsupported(pd_scores, topk, num_classes)
    if why:
        raise ValueError(f"task_aligned_assign: {why}")
    b, m = gt_bboxes.shape[0], gt_bboxes.shape[1]
    labels = gt_labels.reshape(b, m).long()  # float labels truncate, as gt_labels.long() in the reference
    valid = mask_gt.reshape(b, m).bool()
    op = getattr(torch.ops, NAMESPACE).task_aligned_assign
    return op(pd_scores, pd_bboxes, anc_points, labels, gt_bboxes, valid, int(topk), int(num_classes), float(alpha),
              float(beta), float(eps), **options)


def extension_status():
    """{"cpp": (usable, reason), "cuda": (usable, reason)} without starting a build: the prebuilt module (or
    an already built JIT library) is loaded if present; otherwise the reason says the build happens on first
    use."""
    if kernels_disabled():
        return {"cpp": (False, "YOLOV10_KERNELS=off"), "cuda": (False, "YOLOV10_KERNELS=off")}
    if not _state["attempted"] and not op_registered():
        spec = _prebuilt_spec()
        if (spec is None or _prebuilt_is_stale(spec)) and not (
                os.environ.get("YOLOV10_KERNELS_NO_JIT", "0") != "1" and _jit_cached()):
            how = ("JIT build disabled (YOLOV10_KERNELS_NO_JIT=1)" if os.environ.get("YOLOV10_KERNELS_NO_JIT") == "1"
                   else "JIT-builds on first use of FusedTaskAlignedAssigner")
            return {"cpp": (False, f"not built yet: {how} (or prebuild with `pip install --no-build-isolation -e .`)"),
                    "cuda": (False, "not built yet (builds on first use when a CUDA device and nvcc are there)")}
    ok, how = load()
    if not ok:
        return {"cpp": (False, how), "cuda": (False, how)}
    if op_registered(ASSIGN_OP, "CUDA"):
        cuda = (True, how) if torch.cuda.is_available() else (False, "CUDA kernels built, but no CUDA device")
    else:
        cuda = (False, "no CUDA device" if not torch.cuda.is_available() else
                "the extension was built without its CUDA part (rebuild on a machine with nvcc, or JIT)")
    return {"cpp": (True, how), "cuda": cuda}
