"""Per op and mode: host ops dispatched (ours vs eager), kernel launches, and a byte model.

Counts run on the meta device with autograd (forward + backward in train; eval forward under no_grad), through a
TorchDispatchMode that counts every aten op except views and metadata ops. Ours: the drop-in with its Triton path
forced on (meta tensors are not CUDA), each custom op counted once plus the aten ops its launcher issues; Triton
launches are recorded (not run). Byte model: each counted op reads its tensor inputs and writes its outputs once
(eager: every aten op; ours: the glue ops plus each Triton launch's tensor arguments); the ceiling speed-up of a
memory-bound op is eager bytes / ours bytes."""
import collections
import contextlib
import copy

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from yolov10_kernels.capture import Recorder, custom_ops, direct_config, patched

FREE = ("view", "detach", "alias", "expand", "unsqueeze", "squeeze", "split", "slice", "select", "permute",
        "transpose", "t", "as_strided", "lift_fresh", "_unsafe_view", "reshape", "unbind", "empty", "empty_like",
        "new_empty", "empty_strided", "sym_size", "sym_stride", "sym_numel", "is_same_size", "_has_compatible_shallow_copy_type")


def _nbytes(x):
    return sum(t.numel() * t.element_size() for t in torch.utils._pytree.tree_leaves(x) if isinstance(t, torch.Tensor))


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in FREE:
            self.ops[str(func.overloadpacket)] += 1
            if func.namespace != "yolov10_kernels":  # a custom op's bytes are its launches'
                self.bytes += _nbytes((args, kwargs)) + _nbytes(out)
        return out


def _run(m, xs, train):
    if not train:
        with torch.no_grad():
            m(*xs)
        return
    out = [o for o in torch.utils._pytree.tree_leaves(m(*xs)) if isinstance(o, torch.Tensor) and o.requires_grad]
    torch.autograd.backward([o.float() for o in out], [torch.ones_like(o, dtype=torch.float32) for o in out])


@contextlib.contextmanager
def _ours_on_meta(recorder, counter):
    """The drop-ins' Triton path on meta tensors: custom ops run their launchers under `counter`, launches
    are recorded by `recorder` instead of run."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction
    from yolov10_kernels.modules import dropin

    def jit_run(self, *args, grid, warmup, **kwargs):
        recorder.record(self, args, kwargs, [direct_config(self, kwargs)], tuned=False)

    def tuner_run(self, *args, **kwargs):
        recorder.record(self.fn, args, kwargs, [], tuned=True)

    def counted(op):
        def run(*args, **kwargs):
            with counter:
                return op._init_fn(*args, **kwargs)
        return run
    with contextlib.ExitStack() as stack:
        for obj, name, value in ((JITFunction, "run", jit_run), (Autotuner, "run", tuner_run),
                                 (dropin, "use_triton_on", lambda b, d: True),
                                 (dropin, "_autocast_input", lambda x: x)):  # no autocast on meta
            stack.enter_context(patched(obj, name, value))
        for op in custom_ops():
            stack.enter_context(patched(op, "_abstract_fn", counted(op)))
        yield


PARTS = ("psa.attn",)  # measured on their own too (the targets name PSA's attention)


def _part(op, scale):
    """(module, input shapes) of an op, or of its part: "psa.attn" is the PSA block's Attention alone (what the
    fused attention replaces; the block's other convs are the same eager modules on both sides)."""
    from . import ops
    name, _, part = op.partition(".")
    module, _, in_shapes = ops.op_module(name, scale)
    if part:
        module = module.get_submodule(part)
        in_shapes = [(1, module.qkv.conv.in_channels, *in_shapes[0][2:])]
    return name, module, in_shapes


def count_op(op, scale, train, batch):
    """{eager: {host_ops, bytes}, ours: {host_ops, launches, bytes}} on the meta device. op: one of bench.ops.OPS,
    or "psa.attn" (the PSA block's Attention)."""
    from . import ops
    op, module, in_shapes = _part(op, scale)
    module.train(train)
    with _patched_cuda():
        ours = ops.make_ours(op, module, "cuda", "train_full" if train else "infer")
    res = {}
    for name, m in (("eager", module if train else ops.fold_bn(module)), ("ours", ours)):
        m = m.to("meta").train(train)
        counter, rec = Count(), Recorder()
        ctx = _ours_on_meta(rec, counter) if name == "ours" else contextlib.nullcontext()
        with ctx:
            for counted in (False, True):  # the first call builds what later calls reuse (BN folded into weights)
                m.zero_grad(set_to_none=True)
                rec.launches.clear()
                xs = [torch.empty((batch,) + tuple(s[1:]), device="meta", requires_grad=train) for s in in_shapes]
                with counter if counted else contextlib.nullcontext():
                    _run(m, xs, train)
        launches = len(rec.launches) if name == "ours" else sum(counter.ops.values())
        res[name] = {"host_ops": sum(counter.ops.values()), "launches": launches,
                     "bytes": counter.bytes + sum(ln.tensor_bytes for ln in rec.launches)}
    return res


def _patched_cuda():
    return patched(torch.cuda, "is_available", lambda: True)


def op_summary(launches, scales, log=print):
    """One entry per op / scale / mode (fp32 tensors on meta: bytes scale with the dtype, op counts do not)."""
    from . import ops
    out = []
    for scale in scales:
        for op in ops.OPS + PARTS:
            for train in (False, True):
                batch = 64 if train else 1
                c = count_op(op, scale, train, batch)
                e, o = c["eager"], c["ours"]
                out.append({"op": op, "scale": scale, "mode": "train" if train else "eval", "batch": batch,
                            "host_ops_ours": o["host_ops"], "host_ops_eager": e["host_ops"],
                            "launches_ours": o["launches"], "launches_eager": e["launches"],
                            "bytes_ours": o["bytes"], "bytes_eager": e["bytes"],
                            "byte_ceiling": round(e["bytes"] / max(o["bytes"], 1), 2)})
                log(f"ops {op} {scale} {'train' if train else 'eval'}: host ops ours {o['host_ops']} eager "
                    f"{e['host_ops']}, ceiling {out[-1]['byte_ceiling']}x")
    return out


def _loss_ops(model, preds_meta, factory, n_boxes=40, seed=0):
    """Host ops of the loss (both branches, assigner included) + its backward on the CPU with real tensors shaped
    like the model's train-mode outputs (the assigner's work depends on the boxes, not just on shapes)."""
    from yolov10.defaults import LOSS_GAINS
    from yolov10.loss import V10DetectLoss
    g = torch.Generator().manual_seed(seed)
    preds = {k: [torch.randn(t.shape, generator=g).requires_grad_() for t in v] for k, v in preds_meta.items()}
    B = preds["one2many"][0].shape[0]
    batch = {"cls": torch.randint(0, 80, (n_boxes, 1), generator=g).float(),
             "bboxes": torch.rand(n_boxes, 4, generator=g) * 0.5 + 0.25,
             "batch_idx": torch.arange(n_boxes) % B}
    loss_fn = V10DetectLoss(model, hyp=dict(LOSS_GAINS), assigner_factory=factory)
    counter = Count()
    with counter:
        loss, _ = loss_fn(preds, batch)
        loss.backward()
    return sum(counter.ops.values())


def count_model_ops(ref, ours, batch, imgsz):
    """Host ops of one training forward + backward of the model `ref` (eager) and of `ours` (its drop-in copy, every
    drop-in on its Triton path, launches recorded), on the meta device. Returns {eager: {...}, ours: {...}}: the
    model's ops, its launches (eager: one per op) and the train-mode outputs (meta: the loss part's shapes)."""
    res = {}
    for name, m in (("eager", ref), ("ours", ours)):
        meta = copy.deepcopy(m).to("meta").train()
        x = torch.empty(batch, 3, imgsz, imgsz, device="meta")
        counter, rec = Count(), Recorder()
        ctx = _ours_on_meta(rec, counter) if name == "ours" else contextlib.nullcontext()
        with ctx:
            with torch.no_grad():
                preds = meta(x)
            with counter:
                _run(meta, [x], True)
        model_ops = sum(counter.ops.values())
        res[name] = {"model_ops": model_ops, "launches": len(rec.launches) if name == "ours" else model_ops,
                     "preds": preds}
    return res


def count_model_step(scale="n", batch=2, imgsz=640):
    """Host ops of one training step of yolov10<scale> (forward, loss with both assigners' branches, backward):
    the reference model with the reference assigner vs the accelerated model (every drop-in on its Triton path,
    launches recorded on the meta device) with the fused assigner. The model part is counted on the meta device
    (count_model_ops), the loss part on the CPU (real boxes). Returns {eager: {...}, ours: {...}}."""
    import functools
    from yolov10 import YOLOv10
    from yolov10_kernels.accelerate import accelerate
    from yolov10_kernels.modules.assigner import FusedTaskAlignedAssigner
    ref = YOLOv10(scale).train()
    with _patched_cuda():
        ours = accelerate(copy.deepcopy(ref), backend="triton")
    res = count_model_ops(ref, ours, batch, imgsz)
    for name, m in (("eager", ref), ("ours", ours)):
        r = res[name]
        factory = functools.partial(FusedTaskAlignedAssigner, backend="auto") if name == "ours" else None
        loss_ops = _loss_ops(m, r.pop("preds"), factory)
        r.update(host_ops=r["model_ops"] + loss_ops, loss_ops=loss_ops)
    return res
