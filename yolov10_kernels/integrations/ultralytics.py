"""Run ultralytics' own training (`yolo train`, `YOLO(...).train()`) on the fused kernels, Liger-style.

    import yolov10_kernels
    yolov10_kernels.patch_ultralytics()          # before YOLO(...).train(): class level, covers models and losses
    yolov10_kernels.patch_ultralytics(model)     # or one DetectionModel / YOLO object (and its loss)
    yolov10_kernels.unpatch_ultralytics()
    model = YOLO("yolov10n.yaml")                # or one training run's model only, the callback form:
    for event, fn in yolov10_kernels.integrations.ultralytics.callbacks().items():
        model.add_callback(event, fn)

    python -m yolov10_kernels.integrations.yolo train model=... data=...   # `yolo`, patched (integrations/yolo.py)

What is patched:
- the assigner: ultralytics' losses build `ultralytics.utils.loss.TaskAlignedAssigner`; that name is pointed at
  a subclass of the installed class whose forward runs the fused C++ (CPU) / CUDA op with the installed
  version's semantics (8.3: the original TAL; 8.4: gts enlarged to `stride_val` in the inside test and the
  `topk2` filter of E2ELoss). Calls with extra keyword tensors (pose/seg assigners), an empty batch, or where
  the op is unavailable run the installed class's own forward.
- the modules: CIB (C2fCIB's blocks, RepVGGDW inside), SCDown, every Attention (PSA's, YOLO11/26's C2PSA's,
  YOLO26's C3k2(attn=True)'s) and the light cls branches of every non-legacy Detect-family head (v10Detect,
  Detect, Segment, Pose, OBB and their 26 variants; recognised by structure) are swapped for the drop-ins of
  yolov10_kernels.modules (state_dict keys unchanged); at class level every DetectionModel ultralytics builds
  later (the trainer builds its own) gets them at the end of its __init__, a model handed to a trainer in
  BaseTrainer.setup_model, and DDP workers through their generated script (generate_ddp_file).

ultralytics is imported only when a function here is called; it is never a dependency of the package.
"""
import functools
from pathlib import Path

import torch

from ..ops import assign
from ..ops.utils import kernels_disabled, warn_once

SUPPORTED = ((8, 3), (8, 4))  # minor versions whose TaskAlignedAssigner the op reproduces
SUPPORTED_TEXT = ">=8.3.0,<8.5.0"
OPS = ("cib", "scdown", "psa", "cls_head")  # the drop-in counts of swap_modules' report
_patched = {}  # (owner object, attribute name) -> original value, for unpatch_ultralytics
_assigner_classes = {}  # installed TaskAlignedAssigner class -> its fused subclass


def ultralytics_version():
    """(major, minor, patch) of the installed ultralytics; ImportError if it is not installed."""
    import ultralytics
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in ultralytics.__version__.split(".")[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def check_version():
    """The installed (major, minor, patch); RuntimeError naming it and the supported range if unsupported."""
    import ultralytics
    v = ultralytics_version()
    if v[:2] not in SUPPORTED:
        raise RuntimeError(f"yolov10_kernels.patch_ultralytics supports ultralytics {SUPPORTED_TEXT}; the installed "
                           f"version is {ultralytics.__version__} (nothing was patched)")
    return v


def fused_assigner_class():
    """The fused subclass of the installed ultralytics.utils.tal.TaskAlignedAssigner: same constructor, call and
    outputs; `calls` counts the assignments the op ran."""
    from ultralytics.utils import tal
    base = tal.TaskAlignedAssigner
    if base not in _assigner_classes:

        @torch.no_grad()
        def forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, **extra):
            if extra or gt_bboxes.shape[1] == 0 or assign.unsupported(pd_scores, self.topk, self.num_classes) \
                    or not _use_op(pd_scores.device):  # what the op cannot do (topk > 32): the installed class
                return base.forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, **extra)
            self.bs, self.n_max_boxes = pd_scores.shape[0], gt_bboxes.shape[1]
            labels, bboxes, scores, fg, idx = assign.task_aligned_assign(
                pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, self.topk, self.num_classes,
                self.alpha, self.beta, self.eps, **_op_options(self))
            type(self).calls += 1
            # the installed class's output dtypes: boxes follow gt_bboxes, scores the align metric's dtype
            score_dtype = torch.promote_types(pd_scores.dtype, pd_bboxes.dtype)
            return labels, bboxes.to(gt_bboxes.dtype), scores.to(score_dtype), fg, idx

        _assigner_classes[base] = type("FusedTaskAlignedAssigner", (base,), {
            "__module__": __name__, "forward": forward, "calls": 0,
            "__doc__": f"{base.__module__}.TaskAlignedAssigner whose assignment runs the fused op (same outputs)."})
    return _assigner_classes[base]


def assigner_pair(**kwargs):
    """(the installed TaskAlignedAssigner, the fused one) built with the same arguments, for side-by-side use."""
    from ultralytics.utils import tal
    return tal.TaskAlignedAssigner(**kwargs), fused_assigner_class()(**kwargs)


def _op_options(assigner):
    """The op's trailing arguments for the installed version's semantics (8.4: stride_val, topk2 and its CIoU op
    order)."""
    if ultralytics_version()[:2] < (8, 4):
        return {}
    return {"stride_val": float(assigner.stride_val), "topk2": int(assigner.topk2), "ciou84": True}


def _use_op(device):
    if kernels_disabled():
        return False
    ok, why = assign.load()
    if ok and assign.has_kernel(device.type):
        return True
    assign.warn_fallback(why if not ok else f"no {device.type} kernel built")
    return False


def _fuse_assigner(assigner):
    """A fused copy of a plain ultralytics TaskAlignedAssigner (same attributes); other classes unchanged."""
    from ultralytics.utils import tal
    if type(assigner) is not tal.TaskAlignedAssigner:
        return assigner
    new = fused_assigner_class().__new__(fused_assigner_class())
    new.__dict__.update(assigner.__dict__)
    return new


def patch_criterion(criterion):
    """Give a built ultralytics loss (v8DetectionLoss, E2EDetectLoss, E2ELoss, ...) the fused assigner; returns
    how many assigners were replaced."""
    n = 0
    for part in (criterion, getattr(criterion, "one2many", None), getattr(criterion, "one2one", None)):
        if part is not None and hasattr(part, "assigner"):
            new = _fuse_assigner(part.assigner)
            n += new is not part.assigner
            part.assigner = new
    return n


# heads whose cls branch is not a plain class score: their own reason, in the report ("left_alone")
LEFT_ALONE = {"YOLOEDetect": "its cls branch ends in prompt embeddings for the contrastive head, and fuse() folds "
                             "the text prompts into its last conv",
              "WorldDetect": "its cls branch is a dense 3x3 chain ending in text embeddings for the contrastive head"}


def swap_modules(model, backend="auto"):
    """Swap an ultralytics model's CIB / SCDown / Attention (PSA's, C2PSA's, C3k2(attn=True)'s) modules and the
    light cls branches of every non-legacy Detect-family head (Detect, Segment, Pose, OBB, their 26 variants,
    v10Detect: cv3 and one2one_cv3) for the fused drop-ins in place. Returns {op: number of drop-ins} ("psa": fused
    attention modules) plus "attention": {block class: fused attention modules inside} and, for YOLOE / World
    heads, "left_alone": {head class: why}. Heads are recognised by structure (ultralytics rewrites Detect.legacy
    per build): a legacy dense head (YOLOv8) counts 0, silently."""
    from ultralytics.nn.modules import block, head

    from ..modules import cib, cls_head, psa, scdown
    excluded = tuple(getattr(head, name) for name in LEFT_ALONE if hasattr(head, name))
    counts = {"cib": cib.swap(model, backend, ref_cls=block.CIB),
              "scdown": scdown.swap(model, backend, ref_cls=block.SCDown),
              "psa": psa.swap(model, backend, ref_cls=block.PSA, attention_cls=block.Attention),
              "cls_head": cls_head.swap(model, backend, ref_cls=head.Detect, exclude=excluded)}
    counts["attention"] = _attention_by_block(model)
    left = {name: why for name, why in LEFT_ALONE.items()
            if hasattr(head, name) and any(isinstance(m, getattr(head, name)) for m in model.modules())}
    if left:
        counts["left_alone"] = left
    return counts


def _attention_by_block(model):
    """{class of the model's layer (model.model[i]: PSA, C2PSA, C3k2, ...): fused attention modules inside}."""
    from ..modules.psa import FusedAttention
    found = {}
    for layer in getattr(model, "model", ()):
        n = sum(isinstance(m, FusedAttention) for m in layer.modules())
        name = getattr(type(layer), "reference_class", type(layer)).__name__  # a FusedPSA counts as PSA
        if n:
            found[name] = found.get(name, 0) + n
    return found


def _set(owner, name, value):
    _patched.setdefault((owner, name), getattr(owner, name))
    setattr(owner, name, value)


def _patch_classes(modules, assigner, backend):
    from ultralytics.engine import trainer as trainer_module
    from ultralytics.nn import tasks
    from ultralytics.utils import loss
    done = {}
    if assigner:
        _set(loss, "TaskAlignedAssigner", fused_assigner_class())
        done["assigner"] = "ultralytics.utils.loss.TaskAlignedAssigner -> fused (losses built from now on)"
    if modules:
        original_init = _patched.get((tasks.DetectionModel, "__init__"), tasks.DetectionModel.__init__)

        def __init__(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            swap_modules(self, backend)

        _set(tasks.DetectionModel, "__init__", __init__)
        done["modules"] = ("DetectionModel.__init__ swaps CIB/SCDown/Attention/light cls heads (models built from "
                           "now on)")
        # a model the trainer is handed rather than builds (a DDP worker's unpickled one) is swapped as well
        _set(trainer_module.BaseTrainer, "setup_model", _swapping_setup_model(
            _patched.get((trainer_module.BaseTrainer, "setup_model"), trainer_module.BaseTrainer.setup_model),
            backend))
        done["trainer"] = "BaseTrainer.setup_model swaps the modules of the trainer's model, built or handed over"
    if modules or assigner:
        from ultralytics.utils import dist
        _set(dist, "generate_ddp_file", _patching_ddp_file(
            _patched.get((dist, "generate_ddp_file"), dist.generate_ddp_file), modules, assigner, backend))
        done["ddp"] = "DDP worker scripts (ultralytics.utils.dist.generate_ddp_file) apply this patch first"
    return done


MAIN_BLOCK = 'if __name__ == "__main__":\n'


def _patching_ddp_file(generate, modules, assigner, backend):
    """ultralytics.utils.dist.generate_ddp_file whose worker script first applies this class-level patch in the
    worker process. Up to 8.4.139 the script rebuilds the trainer from its arguments (the patched DetectionModel
    swaps); from 8.4.140 it unpickles the parent's model, whose drop-ins pickle as the modules they replaced (the
    patched BaseTrainer.setup_model swaps them again)."""

    def generate_ddp_file(trainer):
        path = Path(generate(trainer))
        text = path.read_text(encoding="utf-8")
        if MAIN_BLOCK not in text:
            raise RuntimeError(f"yolov10_kernels: the DDP worker script {path} has no `{MAIN_BLOCK.strip()}` block "
                               "to patch; its workers would train unpatched")
        root = str(Path(__file__).resolve().parents[2])  # the folder that holds this package
        prologue = (f"    import sys\n    sys.path.insert(0, {root!r})\n"
                    "    from yolov10_kernels.integrations.ultralytics import ddp_worker_patch\n"
                    f"    ddp_worker_patch(modules={modules!r}, assigner={assigner!r}, backend={backend!r})\n")
        path.write_text(text.replace(MAIN_BLOCK, MAIN_BLOCK + prologue, 1), encoding="utf-8")
        return str(path)

    return generate_ddp_file


def ddp_worker_patch(modules=True, assigner=True, backend="auto"):
    """The first call of a DDP worker script: patch_ultralytics() at class level in the worker, with the parent's
    options; logs the report and, at exit, how many assignments the fused assigner ran in this rank."""
    import atexit
    import os
    import sys
    rank = os.environ.get("RANK", "-1")
    report = patch_ultralytics(modules=modules, assigner=assigner, backend=backend)
    print(f"yolov10_kernels: DDP worker rank {rank}: {report}", file=sys.stderr, flush=True)
    if assigner:
        atexit.register(lambda: print(f"yolov10_kernels: DDP worker rank {rank}: the fused assigner ran "
                                      f"{fused_assigner_class().calls} assignment(s)", file=sys.stderr, flush=True))


def _swapping_setup_model(setup_model, backend):
    """BaseTrainer.setup_model followed by the module swap of the model it leaves in trainer.model: before the
    trainer moves, compiles, DDP-wraps and EMA-copies it, so training, EMA and validation all run the drop-ins."""

    def swapping_setup_model(trainer):
        from ultralytics.nn.tasks import DetectionModel
        from ultralytics.utils import LOGGER, RANK
        ckpt = setup_model(trainer)
        model = _unwrap(trainer.model)
        if isinstance(model, DetectionModel):  # not a DistillationModel or a classifier
            LOGGER.info(f"yolov10_kernels: rank {RANK}: the trainer's model: "
                        f"{_patch_model(model, True, False, backend)['modules']}")
        return ckpt

    return swapping_setup_model


def _patch_model(model, modules, assigner, backend):
    from ultralytics.nn.tasks import DetectionModel
    net = getattr(model, "model", None) if not isinstance(model, DetectionModel) else model
    if not isinstance(net, DetectionModel):
        raise TypeError(f"patch_ultralytics(model=...) takes an ultralytics DetectionModel or YOLO object, got "
                        f"{type(model).__name__}")
    done = {}
    if modules:
        done["modules"] = swap_modules(net, backend)
        if not any(done["modules"][op] for op in OPS):
            warn_once(("ultralytics", "none"), "yolov10_kernels: the model has no module the kernels fuse (CIB, "
                                               "SCDown, Attention, a light cls head); only the assigner is patched")
    if assigner:
        criterion = getattr(net, "criterion", None)
        if criterion is not None:
            done["assigner"] = f"{patch_criterion(criterion)} assigner(s) of the built loss"
        else:  # built on the first loss() call: patch it then
            original = net.init_criterion

            def init_criterion():
                built = original()
                patch_criterion(built)
                return built

            if not getattr(original, "yolov10_kernels", False):
                init_criterion.yolov10_kernels = True
                net.init_criterion = init_criterion
            done["assigner"] = "the loss, when the model builds it"
    return done


def patch_ultralytics(model=None, modules=True, assigner=True, backend="auto"):
    """Make ultralytics train on the fused kernels: its YOLOv10 (and YOLO11/26) modules and its assigner.

    Without `model`, patch at class level, so that the models and losses ultralytics builds later (inside
    YOLO(...).train() and `yolo train`) get them: DetectionModel.__init__ swaps the modules, BaseTrainer.setup_model
    swaps those of a model handed to a trainer, ultralytics.utils.loss.TaskAlignedAssigner is the fused one, and
    DDP worker scripts apply the same patch first (undo with unpatch_ultralytics()). With `model`, patch that model
    only. Calling it twice is harmless.

    Arguments:
        model: None, or an ultralytics DetectionModel or YOLO object (torch.nn.Module, on the CPU or CUDA, any
            dtype). Given: its modules are swapped in place and its loss (built now, or when the model builds it)
            gets the fused assigner. Default None: the class-level patch.
        modules: bool. Swap CIB, SCDown, every Attention and the light cls branches of the non-legacy
            Detect-family heads for the drop-ins (state_dict keys unchanged). Default True.
        assigner: bool. Give the losses the fused TaskAlignedAssigner. Default True.
        backend: str, the drop-ins' backend: "auto" (default: Triton on CUDA tensors, reference on the CPU),
            "triton" or "reference".

    Returns:
        report: dict of what was patched: "ultralytics" (the installed version), "semantics" ("8.3" or
            "8.4 (stride_val, topk2)"), then "disabled" under YOLOV10_KERNELS=off (nothing patched). At class
            level, a line each for "assigner" (assigner=True), "modules" and "trainer" (modules=True), "ddp"
            (either); with `model`, "modules" (modules=True: swap_modules' {op: number of drop-ins,
            "attention": ..., "left_alone": ...}; one warning if there were none) and "assigner" (assigner=True).

    Raises:
        ValueError: a bad backend.
        RuntimeError: backend="triton" where Triton kernels cannot run, or an ultralytics outside >=8.3.0,<8.5.0
            (nothing is patched).
        ImportError: ultralytics is not installed.
        TypeError: a `model` that is neither a DetectionModel nor a YOLO object holding one.
    """
    from ..backend import check_backend
    check_backend(backend)
    import ultralytics
    check_version()  # before anything is patched
    report = {"ultralytics": ultralytics.__version__,
              "semantics": "8.4 (stride_val, topk2)" if ultralytics_version()[:2] >= (8, 4) else "8.3"}
    if kernels_disabled():
        report["disabled"] = "YOLOV10_KERNELS=off: nothing patched"
        return report
    if model is None:
        report.update(_patch_classes(modules, assigner, backend))
    else:
        report.update(_patch_model(model, modules, assigner, backend))
    return report


def callbacks(modules=True, assigner=True, backend="auto"):
    """The callback form, for one training run and nothing at class level: {event: function} to register with
    `YOLO(...).add_callback(event, function)` before train(). When the trainer starts, it makes that trainer's
    setup_model swap the modules of the model it sets up, before the trainer compiles, DDP-wraps and EMA-copies it
    (training, EMA and validation models all fused); once the trainer is set up, the training model's loss gets
    the fused assigner (the EMA's validation loss keeps the installed one: a hook on the EMA would be pickled into
    the checkpoints). Single process only: ultralytics runs no callbacks in a DDP launcher and rebuilds its
    workers from the arguments (use patch_ultralytics() for DDP). Bad arguments and an unsupported ultralytics
    fail here, not inside training."""
    from ..backend import check_backend
    check_backend(backend)
    check_version()
    events = {}
    if modules:
        def on_pretrain_routine_start(trainer):
            trainer.setup_model = functools.partial(_swapping_setup_model(type(trainer).setup_model, backend), trainer)

        events["on_pretrain_routine_start"] = on_pretrain_routine_start
    if assigner:
        def on_pretrain_routine_end(trainer):
            from ultralytics.utils import LOGGER
            LOGGER.info(f"yolov10_kernels: {patch_ultralytics(_unwrap(trainer.model), False, True, backend)}")

        events["on_pretrain_routine_end"] = on_pretrain_routine_end
    return events


def _unwrap(model):
    """The model inside DistributedDataParallel (.module) and torch.compile (._orig_mod) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def unpatch_ultralytics():
    """Undo the class-level patches of patch_ultralytics() (and DDP worker scripts generated from now on run
    unpatched). Models and losses already built keep their drop-ins and fused assigners, and a
    patch_ultralytics(model) is not undone.

    Arguments:
        None.

    Returns:
        restored: list of str, the attributes put back ("DetectionModel.__init__",
            "ultralytics.utils.loss.TaskAlignedAssigner", ...); [] when nothing was patched at class level.

    Raises:
        None of its own.
    """
    restored = [f"{getattr(owner, '__name__', owner)}.{name}" for owner, name in _patched]
    for (owner, name), value in _patched.items():
        setattr(owner, name, value)
    _patched.clear()
    return restored


def __getattr__(name):  # pickle finds the fused class by name (ultralytics checkpoints hold the loss)
    if name == "FusedTaskAlignedAssigner":
        return fused_assigner_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
