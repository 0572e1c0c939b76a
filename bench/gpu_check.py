"""Correctness phase of the GPU session: every fused op against the reference modules, in eval and in train
(forward + backward), fp32 / bf16 / fp16, at the target shapes and at odd shapes; the accelerated model
against the reference model; the CUDA assigner against the C++ CPU op. No pytest, no ultralytics.

Rules: fp32 relative error max|ours - ref| / S <= 1e-4 (TF32 off in the reference); fp16/bf16
max|ours - ref32| <= 2 max|torch_lowp - ref32| + atol * max(1, S) (flash-attention's rule: ours may be at
most twice as far from the fp32 result as PyTorch's own low-precision run), for the output and for every
gradient. S is max|ref| of the output, and for gradients the largest max|ref grad| of the case: some
gradients cancel to almost zero (the BN bias before a conv that feeds a train-mode BN), and their rounding
error relative to their own size would be noise. A dry run (CPU, TRITON_INTERPRET=1) runs the same code at tiny shapes in fp32, and the C++
assigner against the reference assigner."""
import copy
import dataclasses
import time

import torch

from . import ops

FP32_RTOL = 1e-4
LOWP_ATOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2}
MODEL_RTOL = 1e-4
# the whole model's backward sums rounding over ~100 layers in a different order: its gradients get 10x the
# per-op tolerance (the per-op checks above hold every kernel to 1e-4)
MODEL_GRAD_RTOL = 1e-3
ASSIGN_B, ASSIGN_MS = 16, (0, 1, 100, 1000, 2000)
DRY_ASSIGN_B, DRY_ASSIGN_MS = 2, (0, 1, 10)


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    scale: str
    batch: int
    hw: tuple  # spatial size of the first input (cls_head: of level P3; the others halve)
    dtype: torch.dtype
    train: bool
    channels_last: bool

    @property
    def name(self):
        return (f"{self.op} yolov10{self.scale} b{self.batch} {self.hw[0]}x{self.hw[1]} {str(self.dtype)[6:]} "
                f"{'train' if self.train else 'eval'}{' cl' if self.channels_last else ''}")


def cases(dry_run):
    """Target shapes (yolov10s: eval at batch 1, train at batch 64, 640 px) and odd shapes, every dtype; the cls
    head and PSA of yolov10n (= YOLO11n's and YOLO26n's) in fp32 and bf16; a dry run: the tiny model, fp32, small
    odd shapes."""
    out = []
    if dry_run:
        for op in ops.OPS:
            for train in (False, True):
                out.append(Case(op, "tiny", 2, (5, 7) if op != "cls_head" else (8, 6), torch.float32, train, False))
        return out
    for op in ops.OPS:
        _, _, shapes = ops.op_module(op, "s")
        h = shapes[0][2]
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            out.append(Case(op, "s", 1, (h, h), dtype, False, True))
            out.append(Case(op, "s", 64, (h, h), dtype, True, True))
            odd = (h // 2 + 1 if op in ("scdown", "cls_head") else h - 7, h // 2 - 3 if op != "psa" else h - 9)
            out.append(Case(op, "s", 3, odd, dtype, False, False))
            out.append(Case(op, "s", 3, odd, dtype, True, False))
    for op in ("cls_head", "psa"):  # the YOLO11n / YOLO26n cls heads and attention: yolov10n's (ops.SAME_SHAPES)
        _, _, shapes = ops.op_module(op, "n")
        h = shapes[0][2]
        for dtype in (torch.float32, torch.bfloat16):
            out += [Case(op, "n", 1, (h, h), dtype, False, True), Case(op, "n", 64, (h, h), dtype, True, True)]
    return out


def target_cases(dry_run):
    """The bench's target shapes as warm/check case tuples (op, scale, batch, hw, dtype, train, channels_last):
    yolov10s eval at batch 1 and train at batch 64, bf16, channels_last; PSA also yolov10m."""
    if dry_run:
        return [("scdown", "tiny", 1, (8, 8), "float32", False, False)]
    out = []
    for op, scale in [(op, "s") for op in ops.OPS] + [("psa", "m")]:
        _, _, shapes = ops.op_module(op, scale)
        hw = tuple(shapes[0][2:])
        if scale == "s":
            out.append((op, scale, 1, hw, "bfloat16", False, True))
        out.append((op, scale, 64, hw, "bfloat16", True, True))
    return out


def _randomize_bn(module, seed):
    """Non-trivial BN statistics and affine parameters: a fresh BN is the identity in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                for t, lo, span in ((m.weight, 0.5, 1.0), (m.bias, -0.2, 0.4), (m.running_mean, -0.2, 0.4),
                                    (m.running_var, 0.5, 1.0)):
                    t.copy_(torch.rand(n, generator=g) * span + lo)
    return module


def make_inputs(case, in_shapes, device, seed):
    """One input per level; cls_head's levels halve the spatial size."""
    g = torch.Generator().manual_seed(seed)
    xs = []
    for i, s in enumerate(in_shapes):
        h, w = max(1, case.hw[0] >> i), max(1, case.hw[1] >> i)
        x = torch.randn(case.batch, s[1], h, w, generator=g).to(device)
        xs.append(x.contiguous(memory_format=torch.channels_last) if case.channels_last else x)
    return xs


def build_modules(case, device):
    """(ref32, torch_lowp, ours): the reference module in fp32, PyTorch's own run of it in case.dtype, and
    the fused drop-ins swapped into a copy in case.dtype (BN folded in eval, as model.fuse() would)."""
    module, _, in_shapes = ops.op_module(case.op, case.scale)
    _randomize_bn(module, seed=ops.OPS.index(case.op))
    module.train(case.train)
    ours = ops.make_ours(case.op, module, device, "train_full" if case.train else "infer")
    ref = module if case.train else ops.fold_bn(copy.deepcopy(module))
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    ref32 = ref.to(device).to(memory_format=fmt)
    lowp = copy.deepcopy(ref32).to(case.dtype)
    return ref32, lowp, ours.to(device, case.dtype).to(memory_format=fmt).train(case.train), in_shapes


def run_module(m, xs, go):
    """Outputs as a list; in train, backward with grad-outputs `go` (returns the grads of inputs + params)."""
    if go is None:
        with torch.no_grad():
            out = m(*xs)
        return (out if isinstance(out, (list, tuple)) else [out]), {}
    xs = [x.detach().requires_grad_(True) for x in xs]
    out = m(*xs)
    out = out if isinstance(out, (list, tuple)) else [out]
    torch.autograd.backward([o.float() for o in out], [g.to(o.device) for g, o in zip(go, out)])
    grads = {f"x{i}.grad": x.grad for i, x in enumerate(xs)}
    grads.update({f"{n}.grad": p.grad for n, p in _params(m)})
    return out, grads


def _params(m):
    """Parameters by their reference name: the drop-ins keep names; the bench's container adds 'm.'."""
    return [(n[2:] if n.startswith("m.") else n, p) for n, p in m.named_parameters() if p.grad is not None]


def compare(ours, ref32, lowp, dtype, scale=None):
    """{err, bound, ok}: fp32 relative error, or low precision against PyTorch's own error; `scale` is S of
    the module doc (default max|ref32|)."""
    if ours is None or ref32 is None:
        return {"ok": False, "err": None, "bound": None, "why": "missing"}
    a, r = ours.detach().float(), ref32.detach().float()
    if not torch.isfinite(a).all():
        return {"ok": False, "err": float("nan"), "bound": None, "why": "non-finite"}
    err = (a - r).abs().max().item() if a.numel() else 0.0
    if scale is None:
        scale = r.abs().max().item() if r.numel() else 0.0
    if dtype == torch.float32:
        bound = FP32_RTOL * max(scale, 1e-12)
    else:
        base = (lowp.detach().float() - r).abs().max().item() if r.numel() else 0.0
        bound = 2 * base + LOWP_ATOL[dtype] * max(1.0, scale)
    return {"ok": err <= bound, "err": err, "bound": bound}


def check_case(case, device):
    """One item: every output and gradient compared; status 'pass' / 'fail: <names>'."""
    torch.manual_seed(0)
    ref32, lowp, ours, in_shapes = build_modules(case, device)
    xs = make_inputs(case, in_shapes, device, seed=1)
    go = None
    if case.train:
        with torch.no_grad():
            outs = copy.deepcopy(ref32)(*xs)
        go = [torch.randn_like(o) for o in (outs if isinstance(outs, (list, tuple)) else [outs])]
    out_r, g_r = run_module(ref32, xs, go)
    # fp32 is judged against ref32 alone: PyTorch's own low-precision run is only needed for fp16 / bf16
    xs_lowp = [x.to(case.dtype) for x in xs]
    out_l, g_l = (out_r, g_r) if case.dtype == torch.float32 else run_module(lowp, xs_lowp, go)
    out_o, g_o = run_module(ours, xs_lowp, go)
    results = {f"out{i}": compare(o, r, lp, case.dtype) for i, (o, r, lp) in enumerate(zip(out_o, out_r, out_l))}
    g_scale = max((r.abs().max().item() for r in g_r.values() if r.numel()), default=0.0)
    for name, r in g_r.items():
        results[name] = compare(g_o.get(name), r, g_l.get(name), case.dtype, g_scale)
    bad = [k for k, v in results.items() if not v["ok"]]
    worst = max(results.items(), key=lambda kv: (kv[1]["err"] or 0) / max(kv[1]["bound"] or 1e-30, 1e-30))
    return {"what": "op", "case": case.name, "op": case.op, "train": case.train, "dtype": str(case.dtype)[6:],
            "shape": [list(x.shape) for x in xs], "status": "pass" if not bad else f"fail: {', '.join(bad[:8])}",
            "worst": {"name": worst[0], **worst[1]}, "tensors": results}


def _model_pair(scale, device):
    from yolov10_kernels import accelerate
    ref = _randomize_bn(ops.build_model(scale), seed=3)
    ours = accelerate(copy.deepcopy(ref), backend="triton" if device.type == "cpu" else "auto")
    return ref.to(device), ours.to(device)


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def check_model(scale, batch, res, device):
    """The accelerated model against the reference in fp32: train maps and loss (fused assigner in ours)
    norm-relative; every parameter gradient relative to the largest gradient of the model (some BN bias
    gradients cancel to ~0, see the module doc); eval detections (scores, and boxes relative to their max)."""
    from yolov10.loss import V10DetectLoss
    import yolov10_kernels
    from .e2e import synthetic_targets
    ref, ours = _model_pair(scale, device)
    x = torch.rand(batch, 3, res, res, generator=torch.Generator().manual_seed(5)).to(device)
    targets = synthetic_targets(batch, ref.nc)
    errs = {}
    losses = []
    for name, m, factory in (("ref", ref, None), ("ours", ours, yolov10_kernels.FusedTaskAlignedAssigner)):
        m.train()
        preds = m(x)
        loss, _ = V10DetectLoss(m, assigner_factory=factory)(preds, targets)
        loss.backward()
        losses.append((preds, loss))
    for key in ("one2many", "one2one"):
        for i, (a, b) in enumerate(zip(losses[1][0][key], losses[0][0][key])):
            errs[f"{key}[{i}]"] = _rel(a, b)
    errs["loss"] = _rel(losses[1][1], losses[0][1])
    grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    g_scale = max(g.abs().max().item() for g in grads.values())
    errs["worst_grad"] = max((p.grad - grads[n]).abs().max().item() / g_scale
                             for n, p in ours.named_parameters() if p.grad is not None)
    ref.eval(), ours.eval()
    with torch.no_grad():
        dr, do = ref(x), ours(x)
    scale_box = dr[..., :4].abs().max().clamp_min(1.0)
    errs["eval_scores"] = (do[..., 4] - dr[..., 4]).abs().max().item()
    errs["eval_boxes"] = ((do[..., :4] - dr[..., :4]).abs().max() / scale_box).item()
    bad = [k for k, v in errs.items() if not v <= (MODEL_GRAD_RTOL if k == "worst_grad" else MODEL_RTOL)]
    return {"what": "model", "case": f"yolov10{scale} b{batch} {res}px fp32", "errors": errs,
            "swapped": sorted({type(m).__name__ for m in ours.modules() if type(m).__module__.startswith("yolov10_kernels")}),
            "status": "pass" if not bad else f"fail: {', '.join(bad)}"}


def check_assigner(M, B, device):
    """The fused op on `device` against the C++ CPU op (a dry run: the C++ op against the reference)."""
    from yolov10.assign import TaskAlignedAssigner
    from yolov10_kernels import FusedTaskAlignedAssigner
    from .assign import OP_BACKEND, make_inputs as assign_inputs
    x = assign_inputs(B, max(M, 1), seed=M + 7)
    if M == 0:  # the no-gt batch: padding only
        x = [x[0], x[1], x[2], x[3][:, :0], x[4][:, :0], x[5][:, :0]]
    if device.type == "cuda":
        ref_name, ref = "cpp", FusedTaskAlignedAssigner(topk=10, num_classes=80, alpha=0.5, beta=6.0, backend="cpp")
    else:
        ref_name, ref = "reference", TaskAlignedAssigner(topk=10, num_classes=80, alpha=0.5, beta=6.0)
    ours = FusedTaskAlignedAssigner(topk=10, num_classes=80, alpha=0.5, beta=6.0, backend=OP_BACKEND[device.type])
    want = ref(*x)
    got = [t.cpu() for t in ours(*[t.to(device) for t in x])]
    flips = int(((want[3] != got[3]) | (want[4] != got[4])).sum())
    diffs = {n: (got[i].float() - want[i].float()).abs().max().item() if got[i].numel() else 0.0
             for i, n in ((1, "bboxes"), (2, "scores"))}
    same_labels = torch.equal(got[0], want[0])
    ok = flips == 0 and same_labels and diffs["scores"] <= 1e-5
    return {"what": "assigner", "case": f"B={B} M={M} topk=10 {device.type} vs {ref_name}", "flips": flips,
            "identical": all(torch.equal(got[i], want[i]) for i in range(5)), "max_diff": diffs,
            "status": "pass" if ok else "fail"}


# the measured dispatch (yolov10_kernels.dispatch) at the e2e training shapes: (scale, batch, px, dtype, train, amp);
# a dry run times one eval call per path with the CPU's clock through the interpreter (the mechanism, not choices)
DISPATCH_GPU = ("n", 16, 640, torch.bfloat16, True, True)
DISPATCH_DRY = ("tiny", 1, 64, torch.float32, False, False)


def _wall_timer(fn, name=None, path=None, mode=None):
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def record_dispatch(dry_run, device):
    """Measure the dispatch of an accelerated model (fused against reference per drop-in, shape, dtype and mode;
    no cache: timed now) and return its report as a dict for correctness.json ("table": the text)."""
    from yolov10_kernels import accelerate, dispatch
    scale, batch, res, dtype, train, amp = DISPATCH_DRY if dry_run else DISPATCH_GPU
    model = accelerate(ops.build_model(scale).to(device))
    try:
        report = dispatch.measure(model, (batch, 3, res, res), dtype, train, amp=amp,
                                  timer=_wall_timer if dry_run else None, cache=False)
    finally:
        dispatch.set_policy(None)  # the later checks run the fused path, as before
    return {"model": f"yolov10{scale}", "batch": batch, "imgsz": res, "dtype": str(dtype), "amp": amp,
            "status": f"skipped: {report.skipped}" if report.skipped else "ok", "table": str(report),
            **report.as_dict()}


def run(session, f):
    """The phase body: every item is written to correctness.json as soon as it is checked."""
    device = torch.device("cpu" if session.dry_run else "cuda")
    if device.type == "cuda":  # the fp32 reference must not run on TF32 tensor cores
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    jobs = [(check_case, (c, device)) for c in cases(session.dry_run)]
    model_args = ("tiny", 2, 64) if session.dry_run else ("s", 2, 320)
    jobs.insert(len(jobs) // 2, (check_model, (*model_args, device)))
    b, ms = (DRY_ASSIGN_B, DRY_ASSIGN_MS) if session.dry_run else (ASSIGN_B, ASSIGN_MS)
    jobs += [(check_assigner, (m, b, device)) for m in ms]
    for fn, args in jobs:
        if session.left() < 0:
            f.add({"what": fn.__name__, "case": str(args[0]), "status": "skipped: phase time budget"})
            continue
        try:
            item = fn(*args)
        except Exception as e:
            item = {"what": fn.__name__, "case": getattr(args[0], "name", str(args[:3])),
                    "status": f"error: {type(e).__name__}: {str(e)[:300]}"}
        session.log(f"  check {item['case']}: {item['status']}")
        f.add(item)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    try:
        f.set(dispatch=record_dispatch(session.dry_run, device) if session.left() > 0 else
              {"status": "skipped: phase time budget"})
    except Exception as e:
        f.set(dispatch={"status": f"error: {type(e).__name__}: {str(e)[:300]}"})
    session.log(f"  dispatch: {f.data['dispatch']['status']}")
    statuses = [it["status"] for it in f.data["items"]]
    f.set(passed=statuses.count("pass"), failed=sum(s.startswith(("fail", "error")) for s in statuses),
          skipped=sum(s.startswith("skipped") for s in statuses))
