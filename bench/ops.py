"""Per-op benchmarks: CIB block, SCDown, the v10Detect light cls head and PSA, per mode

  infer       eval, BN folded into the convs (as model.fuse() leaves them), no autograd
  train_fwd   train mode (BN on batch statistics), autograd recording: the forward alone
  train_bwd   the backward alone, replayed on retained graphs (derived as full - fwd where an impl cannot
              replay a retained graph; the row then says so)
  train_full  forward + backward

and per implementation, side by side in one process:

  eager         the reference modules (yolov10.modules / v10Detect) in eager PyTorch (cuDNN)
  compile       torch.compile(reference, mode=...) ("max-autotune" on the GPU; see _compile_mode)
  compile_sdpa  PSA only: the attention on F.scaled_dot_product_attention
                (yolov10_kernels.testing.psa_baselines.psa_attention_sdpa) under torch.compile
  ours          this package's drop-ins, put in place by the op's own `swap(model, backend)` (what
                yolov10_kernels.accelerate calls)

Modules and shapes come from the real models: YOLOv10(scale) is built, each op's input shape is captured
with forward pre-hooks on a meta-device copy at 640 px, and the benchmarked module is a copy of the model's
own instance (the first CIB, the first SCDown = P3->P4, the PSA, and the three levels of the one-to-many cls
branch together). Inputs are rotated through a pool that covers several times the L2 cache.
"""
import copy
import dataclasses
import functools
import time
import traceback

import torch
import torch.nn as nn

from .common import (NotAvailable, Pool, log, make_row, measure_copy_bandwidth, nbytes, peak_extra_mb,
                     pool_size, sync, time_fn, timing_fields)

OPS = ("cib", "scdown", "cls_head", "psa")
# ultralytics' YOLO11 and YOLO26 (80 classes, 640 px) have yolov10<scale>'s light cls branches (P3-P5 inputs, c3) and
# PSA (their C2PSA's; its attention is also C3k2(attn=True)'s in YOLO26): the yolov10n/s cls_head and psa rows are
# theirs too (tests/test_ultralytics_patch.py checks the shapes against ultralytics' models)
SAME_SHAPES = {"n": ("yolo11n", "yolo26n"), "s": ("yolo11s", "yolo26s")}
MODES = ("infer", "train_fwd", "train_bwd", "train_full")
TRAIN_MODES = MODES[1:]


# ----------------------------------------------------------------------------------------- model shapes
def build_model(scale):
    """YOLOv10(scale) (CPU, fp32, train mode). Scale "tiny" is the smoke-test model: yolov10n's layer list at
    1/8 width (PSA with one 64-wide head) and 8 classes."""
    from yolov10 import YOLOv10
    if scale != "tiny":
        return YOLOv10(scale)
    from yolov10.model import resolve_cfg
    cfg = resolve_cfg("n")
    cfg["scales"]["n"] = [0.33, 0.125, 1024]
    return YOLOv10(cfg, nc=8)


@functools.lru_cache(maxsize=None)
def model_parts(scale):
    """(model, {op: (module path, [input shapes at 640 px, batch 1])}) for yolov10<scale> (CPU, fp32);
    scale "tiny" is the smoke-test model."""
    from yolov10.modules import CIB, PSA, SCDown

    model = build_model(scale)
    want = {CIB: "cib", SCDown: "scdown", PSA: "psa"}
    first = {}
    meta = copy.deepcopy(model).to("meta").train()
    for path, mod in meta.named_modules():
        if type(mod) in want:
            def hook(mod, inp, key=want[type(mod)], path=path):
                first.setdefault(key, (path, [tuple(t.shape) for t in inp]))
            mod.register_forward_pre_hook(hook)
    level_shapes = [None] * len(meta.head.cv3)
    for i, branch in enumerate(meta.head.cv3):
        branch.register_forward_pre_hook(lambda mod, inp, i=i: level_shapes.__setitem__(i, tuple(inp[0].shape)))
    with torch.no_grad():
        meta.head(meta.features(torch.empty(1, 3, 640, 640, device="meta")))
    first["cls_head"] = ("model.%d.cv3" % (len(model.model) - 1), level_shapes)
    return model, first


def op_module(op, scale):
    """A fresh fp32 CPU copy of the op's module in yolov10<scale> and its per-image input shapes at 640 px."""
    model, shapes = model_parts(scale)
    path, in_shapes = shapes[op]
    if op == "cls_head":
        return ClsHead(copy.deepcopy(model.head)), path, in_shapes
    return copy.deepcopy(model.get_submodule(path)), path, in_shapes


class ClsHead(nn.Module):
    """The light classification branch of v10Detect (DW3x3 -> PW -> DW3x3 -> PW -> 1x1 conv) at every level,
    run as in training on the one-to-many head. Holds the whole head so that the ops' swap() finds it."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, *xs):
        return [branch(x) for branch, x in zip(self.head.cv3, xs)]

    def bench_weights(self):
        return list(self.head.cv3.parameters())


class _Container(nn.Module):
    """What swap() walks: the module under test as a named child, so in-place replacement lands here."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, *xs):
        return self.m(*xs)


def fold_bn(module):
    """Fold every BN into its conv and merge RepVGGDW branches, as YOLOv10.fuse() does, on any sub-tree."""
    from yolov10.modules import Conv, RepVGGDW
    for m in list(module.modules()):
        if isinstance(m, RepVGGDW):
            m.fuse()
        elif isinstance(m, Conv):
            m.fuse_bn()
    return module.eval()


# ------------------------------------------------------------------------------------------ the variants
def _ops_swap(op):
    """The op's swap(model, backend), as accelerate() calls it."""
    from yolov10_kernels import OPS as K_OPS
    from yolov10_kernels.backend import kernels_disabled
    if kernels_disabled():
        raise NotAvailable("YOLOV10_KERNELS=off")
    return K_OPS[op].swap


def ours_backend(device):
    """'auto' on CUDA (the Triton kernels); on the CPU only through the interpreter (smoke runs), because
    'auto' keeps the reference modules on the CPU and timing those again would be a fake 'ours' number."""
    import os
    if torch.device(device).type == "cuda":
        return "auto"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return "triton"
    raise NotAvailable("the Triton kernels run on CUDA; on the CPU accelerate(backend='auto') keeps the "
                       "reference modules (TRITON_INTERPRET=1 runs them for testing, not timing)")


def make_ours(op, module, device, mode):
    """Swap the op's fused drop-in into a copy of `module` (in the module's current train/eval state); in
    infer mode the BN is folded afterwards, as model.fuse() would do it on an accelerated model."""
    swap = _ops_swap(op)
    backend = ours_backend(device)
    box = _Container(copy.deepcopy(module))
    n = swap(box, backend)
    if not n:
        raise NotAvailable(f"{op}.swap() replaced no module of {type(module).__name__}")
    if mode == "infer":
        fold_bn(box)
    return box


def make_sdpa_psa(psa):
    """PSA whose Attention runs yolov10_kernels.testing.psa_baselines.psa_attention_sdpa (SDPA, kd != hd)."""
    try:
        from yolov10_kernels.testing.psa_baselines import psa_attention_sdpa
    except ImportError as e:
        raise NotAvailable(f"psa_attention_sdpa is not importable ({type(e).__name__}: {e})") from None
    from yolov10.modules import Attention

    class SDPAAttention(Attention):
        def forward(self, x):
            y = psa_attention_sdpa(self.qkv.conv(x), getattr(self.qkv, "bn", None), self.pe.conv.weight,
                                   getattr(self.pe, "bn", None), self.num_heads, self.key_dim, self.head_dim,
                                   self.training, pe_bias=self.pe.conv.bias)
            return self.proj(y)

    m = copy.deepcopy(psa)
    m.attn.__class__ = SDPAAttention
    return m


def compile_mode(device, requested, cudagraph_timing):
    """torch.compile mode for a row. "max-autotune" captures CUDA graphs itself (cudagraph trees); rows that
    the bench times inside its own CUDA graph (small-batch latency) use "max-autotune-no-cudagraphs" so that
    the capture nests cleanly: the same kernels, graphs applied once, as for eager and ours."""
    if torch.device(device).type == "cuda" and requested == "max-autotune" and cudagraph_timing:
        return "max-autotune-no-cudagraphs"
    return requested


# -------------------------------------------------------------------------------------------- cases
@dataclasses.dataclass
class Case:
    op: str
    scale: str
    batch: int
    res: int
    modes: tuple
    impls: tuple = ("eager", "compile", "ours")

    @property
    def also(self):
        """The ultralytics models whose modules this case's shapes are (SAME_SHAPES)."""
        return list(SAME_SHAPES.get(self.scale, ())) if self.op in ("cls_head", "psa") else []

    @property
    def name(self):
        n = (self.res // 32) ** 2
        extra = f" (N={n})" if self.op == "psa" and self.res != 640 else ""
        return f"yolov10{self.scale} b{self.batch} {self.res}px{extra}"


def default_cases(device, quick=False, smoke=False, compile_scope="targets", scales=None, ops=None):
    """The case list, most important first (the budget guard drops from the end of each section).
    Targets (issues 4 and 5): yolov10s, bf16, channels_last; inference at batch 1, training at batch 64;
    PSA training at batch 64 for s and m; PSA peak memory at N = 1600 (1280 px)."""
    cuda = torch.device(device).type == "cuda"
    ops = tuple(ops or OPS)
    all3 = ("eager", "compile", "ours")
    no_compile = ("eager", "ours")
    psa_all = ("eager", "compile", "compile_sdpa", "ours")
    if smoke:
        return [Case(op, "tiny", 2, 64, MODES, psa_all if op == "psa" else all3) for op in ops]
    tb = 64 if cuda else (2 if quick else 8)  # training batch
    ib = 64 if cuda else 8                    # inference throughput batch
    res = 640 if (cuda or not quick) else 320
    first = []
    for op in ops:
        first.append(Case(op, "s", 1, res, ("infer",), psa_all if op == "psa" else all3))
        first.append(Case(op, "s", tb, res, TRAIN_MODES, psa_all if op == "psa" else all3))
    if "psa" in ops and not quick:
        first.append(Case("psa", "m", tb, res, TRAIN_MODES, psa_all))
    rest = []
    if not quick:
        for op in ops:
            for sc in (scales or ("n", "s", "m")):
                impls = all3 if compile_scope == "all" else no_compile
                if op == "psa" and compile_scope == "all":
                    impls = psa_all
                if sc != "s":
                    rest.append(Case(op, sc, 1, res, ("infer",), impls))
                    if not (op == "psa" and sc == "m"):
                        rest.append(Case(op, sc, tb, res, TRAIN_MODES, impls))
                rest.append(Case(op, sc, ib, res, ("infer",), impls))
        if "psa" in ops and cuda:
            rest.append(Case("psa", "s", tb, 1280, ("train_full",), ("eager", "compile_sdpa", "ours")
                             if compile_scope == "all" else no_compile))
    elif cuda:
        for op in ops:
            rest.append(Case(op, "s", ib, res, ("infer",), no_compile))
    if quick:  # the YOLO11n / YOLO26n cls heads and attention (SAME_SHAPES); the full run has every n row
        for op in [op for op in ("cls_head", "psa") if op in ops]:
            rest += [Case(op, "n", 1, res, ("infer",), no_compile), Case(op, "n", tb, res, TRAIN_MODES, no_compile)]
    if compile_scope == "none":
        first = [dataclasses.replace(c, impls=tuple(i for i in c.impls if not i.startswith("compile")))
                 for c in first]
    if scales:
        first = [c for c in first if c.scale in scales]
        rest = [c for c in rest if c.scale in scales]
    return first, rest


# ------------------------------------------------------------------------------------------- one case
class _Runner:
    def __init__(self, device, dtype, channels_last, rep_ms, warmup_ms, smoke, compile_request, budget,
                 copy_bw, compile_backend="inductor"):
        self.device, self.dtype, self.cl = torch.device(device), dtype, channels_last
        self.rep_ms, self.warmup_ms, self.smoke = rep_ms, warmup_ms, smoke
        self.compile_request, self.compile_backend = compile_request, compile_backend
        self.budget, self.copy_bw = budget, copy_bw
        self.compile_times = []

    # -- helpers
    def _to(self, m):
        m = m.to(self.device, self.dtype)
        return m.to(memory_format=torch.channels_last) if self.cl else m

    def _input(self, shape, requires_grad):
        t = torch.randn(shape, device=self.device, dtype=self.dtype)
        if self.cl and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t.requires_grad_(requires_grad)

    def compile_estimate(self):
        if self.smoke:
            return 0.0
        if not self.compile_times:
            return 45.0 if self.device.type == "cuda" else 30.0
        # the first compilation also pays Inductor's one-time start-up: weigh the recent ones
        return 1.2 * (self.compile_times[-1] if len(self.compile_times) > 1 else self.compile_times[0])

    # -- set-up of one (case, mode, impl)
    def build(self, case, mode, impl):
        """Returns (callable module, time it in a CUDA graph?, compile mode or None, bytes of the reference
        module's weights in the bench dtype). Raises NotAvailable."""
        module, path, _ = op_module(case.op, case.scale)
        train = mode != "infer"
        module.train(train)
        wsrc = fold_bn(copy.deepcopy(module)) if not train else module  # bytes of the weights that must be read
        weights = wsrc.bench_weights() if isinstance(wsrc, ClsHead) else list(wsrc.parameters())
        cudagraph = (self.device.type == "cuda" and not train and case.batch <= 8 and not self.smoke)
        if impl == "ours":
            m = make_ours(case.op, module, self.device, mode)
        elif impl == "compile_sdpa":
            m = make_sdpa_psa(module)
        else:
            m = module
        if mode == "infer" and impl != "ours":
            fold_bn(m)
        m = self._to(m).train(train)
        w_bytes = sum(p.numel() for p in weights) * torch.finfo(self.dtype).bits // 8
        cmode = None
        if impl.startswith("compile"):
            cmode = compile_mode(self.device, self.compile_request, cudagraph)
            kw = {"backend": self.compile_backend} if self.compile_backend != "inductor" else {"mode": cmode}
            m = torch.compile(m, dynamic=False, fullgraph=False, **kw)
            if self.compile_backend != "inductor":
                cmode = f"backend={self.compile_backend}"
        return m, cudagraph, cmode, w_bytes

    def run_case(self, case, impls=None):
        rows = []
        impls = case.impls if impls is None else tuple(i for i in case.impls if i in impls)
        if not impls:
            return rows
        log(f"[ops] {case.op:8s} {case.name}: modes {','.join(case.modes)}; impls {','.join(impls)}")
        _, path, per_image = op_module(case.op, case.scale)
        f = case.res / 640
        shapes = [(case.batch, s[1], max(1, round(s[2] * f)), max(1, round(s[3] * f))) for s in per_image]
        groups = [("infer",)] if "infer" in case.modes else []
        train_modes = tuple(m for m in case.modes if m != "infer")
        if train_modes:
            groups.append(train_modes)
        for modes in groups:
            for impl in impls:
                est = (self.compile_estimate() if impl.startswith("compile") else 0.0) + (
                    0.0 if self.smoke else 0.5 * len(modes))
                ok, why = self.budget.fits(est)
                base = dict(op=case.op, impl=impl, case=case.name, scale=case.scale, batch=case.batch, res=case.res,
                            where=path, also=case.also, shape=shapes, dtype=str(self.dtype).replace("torch.", ""),
                            memory_format="channels_last" if self.cl else "contiguous", device=str(self.device))
                if not ok:
                    rows += [make_row(mode=md, status=why, **base) for md in modes]
                    log(f"    {impl:13s} {why}")
                    continue
                rows += self._run_modes(case, modes, impl, shapes, base)
                if impl.startswith("compile"):
                    _release_compiled()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        return rows

    def _run_modes(self, case, modes, impl, shapes, base):
        try:
            m, cudagraph, cmode, w_bytes = self.build(case, modes[0], impl)
        except NotAvailable as e:
            log(f"    {impl:13s} not available: {e}")
            return [make_row(mode=md, status=f"not available: {e}", **base) for md in modes]
        except Exception as e:  # a broken set-up is reported, not fatal for the suite
            log(f"    {impl:13s} error in set-up: {type(e).__name__}: {e}")
            return [make_row(mode=md, status=f"error: set-up {type(e).__name__}: {e}", **base) for md in modes]
        if impl == "ours":  # which drop-ins run: recorded with every row
            base = dict(base, ours_modules=sorted({type(x).__name__ for x in m.modules()
                                                   if type(x).__module__.startswith("yolov10_kernels")}))
        train = modes[0] != "infer"
        per_set = sum(nbytes(torch.empty(s, dtype=self.dtype, device="meta")) for s in shapes)
        n_sets = 1 if self.smoke else pool_size(per_set, self.device)
        pool = Pool(lambda i: [self._input(s, train) for s in shapes], n_sets)
        params = [p for p in m.parameters() if p.requires_grad]
        cudagraph_trees = impl.startswith("compile") and cmode == "max-autotune" and self.device.type == "cuda"

        def fwd():
            if cudagraph_trees:
                torch.compiler.cudagraph_mark_step_begin()
            out = m(*pool.next())
            return out if isinstance(out, (list, tuple)) else [out]

        try:
            out_bytes, grads, compile_s = self._first_call(impl, train, fwd)
        except Exception as e:
            msg = f"error: first call {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log(f"    {impl:13s} {msg}")
            log(traceback.format_exc(limit=-4))
            return [make_row(mode=md, status=msg, **base) for md in modes]
        fwd_bytes = per_set + out_bytes + w_bytes
        bwd_bytes = out_bytes + 2 * per_set + 2 * w_bytes
        ctx = dict(fwd=fwd, grads=grads, pool=pool, grad_to_none=params + [t for s in pool.items for t in s],
                   cudagraph=cudagraph, base=dict(base, compile_s=compile_s, compile_mode=cmode),
                   bytes_by_mode={"infer": fwd_bytes, "train_fwd": fwd_bytes, "train_bwd": bwd_bytes,
                                  "train_full": fwd_bytes + bwd_bytes})
        rows, timed = [], {}
        order = {"infer": 0, "train_fwd": 1, "train_full": 2, "train_bwd": 3}  # bwd last: it may be derived
        for md in sorted(modes, key=order.get):
            rows += self._time_mode(md, impl, ctx, timed)
        return rows

    def _first_call(self, impl, train, fwd):
        """Compilation / autotuning / lazy initialisation, outside the timing. Returns (output bytes, the
        backward's grad-outputs or None, compile seconds for compile rows)."""
        t0 = time.perf_counter()
        if train:
            outs = fwd()
            grads = [torch.randn_like(o) for o in outs]
            torch.autograd.backward(outs, grads)
        else:
            with torch.no_grad():
                outs = fwd()
            grads = None
        sync(self.device)
        first_s = time.perf_counter() - t0
        if self.smoke:
            log(f"    {impl:13s} first call {first_s:.2f}s")
        compile_s = None
        if impl.startswith("compile"):
            compile_s = first_s
            self.compile_times.append(first_s)
        return nbytes(outs), grads, compile_s

    def _time_mode(self, md, impl, ctx, timed):
        """The row of one mode (a list of one row); `timed` collects medians so train_bwd can be derived."""
        base, note = ctx["base"], ""
        try:
            fn, gtn = self._callable(md, ctx["fwd"], ctx["grads"], ctx["pool"], ctx["grad_to_none"])
            if self.smoke:
                # nothing left to run: the first call was infer's callable, or train_full's (whose forward is
                # train_fwd's callable), and train_bwd's set-up ran its callable once
                return [make_row(mode=md, status="ok (smoke: ran once, not timed)", **base)]
            graph = ctx["cudagraph"] and md == "infer"
            t = time_fn(fn, self.device, self.rep_ms, self.warmup_ms, cudagraph=graph, grad_to_none=gtn)
            peak = peak_extra_mb(fn, self.device)
            timed[md] = t.median_ms
            fields = timing_fields(t)
        except Exception as e:
            if not (md == "train_bwd" and {"train_fwd", "train_full"} <= set(timed)):
                msg = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                log(f"    {impl:13s} {md:10s} {msg}")
                log(traceback.format_exc(limit=-4))
                return [make_row(mode=md, status=msg, **base)]
            fields = {"median_ms": max(timed["train_full"] - timed["train_fwd"], 0.0), "p20_ms": None,
                      "p80_ms": None, "timer": "derived"}
            peak = None
            note = f"derived as train_full - train_fwd: a retained graph cannot be replayed here ({type(e).__name__})"
        moved = ctx["bytes_by_mode"][md]
        gbs = moved / (fields["median_ms"] * 1e-3) / 1e9 if fields["median_ms"] else None
        row = make_row(mode=md, **base, **fields, peak_extra_mb=peak, bytes_moved=moved, gbps=gbs,
                       pct_copy_bw=(100 * gbs / self.copy_bw) if (gbs and self.copy_bw) else None,
                       cudagraph=bool(ctx["cudagraph"] and md == "infer"), pool=len(ctx["pool"]), note=note)
        log(f"    {impl:13s} {md:10s} {fields['median_ms']:9.4f} ms  (p20 {fields['p20_ms'] or 0:.4f}, "
            f"p80 {fields['p80_ms'] or 0:.4f})  {gbs or 0:7.1f} GB/s  peak {peak if peak is not None else '-'}"
            f"{'  ' + note if note else ''}")
        return [row]

    def _callable(self, mode, fwd, grads, pool, grad_to_none):
        if mode == "infer":
            def fn():
                with torch.no_grad():
                    fwd()
            return fn, None
        if mode == "train_fwd":
            return fwd, None
        if mode == "train_full":
            def fn():
                torch.autograd.backward(fwd(), grads)
            return fn, grad_to_none
        # train_bwd: one retained graph per pooled input set, replayed in turn
        graphs = [fwd() for _ in range(len(pool))]
        it = iter(range(10**12))

        def fn():
            torch.autograd.backward(graphs[next(it) % len(graphs)], grads, retain_graph=True)
        fn()  # raises here if the impl cannot replay a retained graph
        return fn, grad_to_none


def _release_compiled():
    """Drop dynamo's caches and the CUDA-graph-tree pools of the compiled module just measured, so memory does
    not pile up over a dozen compiled cases (Inductor's on-disk cache stays)."""
    try:
        torch._dynamo.reset()
        from torch._inductor import cudagraph_trees
        cudagraph_trees.reset_cudagraph_trees()
    except Exception:  # best effort: older/newer torch may lack one of these
        pass


def run(device, budget, cases, dtype=None, channels_last=None, rep_ms=None, warmup_ms=None, smoke=False,
        compile_request="max-autotune", compile_backend="inductor", copy_bw=None):
    """Run `cases` in order under `budget`; returns the result rows."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    channels_last = cuda if channels_last is None else channels_last
    rep_ms = rep_ms or (60.0 if cuda else 200.0)
    warmup_ms = warmup_ms or 25.0
    if copy_bw is None and not smoke:
        copy_bw = measure_copy_bandwidth(device)
    r = _Runner(device, dtype, channels_last, rep_ms, warmup_ms, smoke, compile_request, budget, copy_bw,
                compile_backend)
    rows = []
    # two passes: eager and ours for every case first, then the torch.compile rows (the slow, unpredictable
    # compilations), so that a budget overrun costs compile rows, not the others
    quick_impls = ("eager", "ours")
    for case in cases:
        rows += r.run_case(case, quick_impls)
    # compile rows that a target of issues 4/5 compares against go first
    from .compare import TARGETS
    wanted = {(op, case_name, vs) for _, op, _, case_name, vs, _ in TARGETS}
    pairs = [(case, impl) for case in cases for impl in case.impls if impl not in quick_impls]
    pairs.sort(key=lambda p: (p[0].op, p[0].name, p[1]) not in wanted)  # stable: case order otherwise
    for case, impl in pairs:
        rows += r.run_case(case, (impl,))
    return rows
