"""End-to-end rows.

train:  one optimizer step of yolov10n / yolov10s (forward under AMP autocast, the YOLOv10 loss with both
        assignments, backward, SGD) on a fixed synthetic batch; images/s = batch / median step time.
        impls: eager (reference model + reference assigner), ours (yolov10_kernels.accelerate(model) +
        FusedTaskAlignedAssigner in the loss, what the trainer's --kernels auto does), compile
        (torch.compile(model); the loss stays eager).
infer:  the fused model (model.fuse(): BN folded, one-to-one head only), eval, latency at batch 1 (CUDA graph
        replay on the GPU) and throughput at batch 32; eager vs ours (accelerate, then fuse).
"""
import time

import torch

from .common import NotAvailable, Pool, log, make_row, peak_extra_mb, sync, time_fn, timing_fields


def synthetic_targets(batch, nc, boxes_per_image=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = batch * boxes_per_image
    xy = torch.rand(n, 2, generator=g) * 0.8 + 0.1
    wh = torch.rand(n, 2, generator=g) * 0.25 + 0.03
    return {"batch_idx": torch.arange(batch).repeat_interleave(boxes_per_image).float(),
            "cls": torch.randint(0, nc, (n, 1), generator=g).float(),
            "bboxes": torch.cat([xy, wh], 1)}


def _fused_assigner():
    try:
        import yolov10_kernels
        return yolov10_kernels.FusedTaskAlignedAssigner
    except (ImportError, AttributeError) as e:
        return NotAvailable(f"FusedTaskAlignedAssigner is not importable ({type(e).__name__}: {e})")


def _accelerate(model):
    """accelerate(model) with backend='auto'; returns the drop-in classes now in the model and the warnings."""
    import warnings
    from yolov10_kernels import accelerate
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        accelerate(model)
    swapped = sorted({type(m).__name__ for m in model.modules() if type(m).__module__.startswith("yolov10_kernels")})
    return swapped, [str(x.message) for x in w]


def _train_setup(scale, impl, device, batch, res, amp_dtype, compile_mode, channels_last):
    from .ops import build_model
    try:
        from yolov10.loss import V10DetectLoss
    except ImportError as e:
        raise NotAvailable(f"yolov10.loss.V10DetectLoss is not importable ({e})") from None
    torch.manual_seed(0)
    model = build_model(scale).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    note, factory = "", None
    if impl == "ours":
        fa = _fused_assigner()
        swapped, warns = _accelerate(model)
        on_cpu = torch.device(device).type != "cuda"
        if isinstance(fa, NotAvailable) and (not swapped or on_cpu):
            raise NotAvailable(f"nothing to accelerate: {fa}; swapped ops: {swapped or 'none'}")
        factory = None if isinstance(fa, NotAvailable) else fa
        note = (f"swapped {swapped or 'no modules'}; assigner {'fused' if factory else 'reference (' + str(fa) + ')'}"
                + ("; on the CPU accelerate(backend='auto') keeps the reference modules" if on_cpu else ""))
    loss_fn = V10DetectLoss(model, assigner_factory=factory)
    run_model = model
    if impl == "compile":
        if compile_mode.startswith("backend="):  # smoke runs: dynamo only ("backend=eager")
            run_model = torch.compile(model, backend=compile_mode.split("=", 1)[1], dynamic=False)
        else:
            run_model = torch.compile(model, mode=compile_mode, dynamic=False)
        note = f"torch.compile(model, {'mode=' if '=' not in compile_mode else ''}{compile_mode}); loss eager"
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.937, nesterov=True)
    targets = synthetic_targets(batch, model.nc)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    pool = Pool(lambda i: torch.rand(batch, 3, res, res, device=device).contiguous(memory_format=fmt), 2)
    dev_type = torch.device(device).type

    def step():
        with torch.autocast(dev_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            preds = run_model(pool.next())
            loss, _ = loss_fn(preds, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step, note


def _infer_setup(scale, impl, device, batch, res, dtype, channels_last):
    from .ops import build_model
    torch.manual_seed(0)
    model = build_model(scale)
    note = ""
    if impl == "ours":
        if torch.device(device).type != "cuda":
            raise NotAvailable("the fused inference kernels run on CUDA (accelerate keeps the reference on the CPU)")
        swapped, _ = _accelerate(model)
        if not swapped:
            raise NotAvailable("accelerate() swapped no module (no op importable yet)")
        note = f"accelerate() swapped {swapped}, then model.fuse()"
    model.fuse()
    model = model.to(device, dtype).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    n = 8 if batch == 1 else 2
    pool = Pool(lambda i: torch.rand(batch, 3, res, res, device=device, dtype=dtype).contiguous(memory_format=fmt), n)

    def fwd():
        with torch.no_grad():
            model(pool.next())
    return fwd, note


def run(device, budget, scales=("n", "s"), quick=False, smoke=False, compile_mode="default", rep_ms=None,
        train_batch=None, infer_batches=None, res=None):
    device = torch.device(device)
    cuda = device.type == "cuda"
    res = res or (64 if smoke else 640 if (cuda or not quick) else 320)
    tb = train_batch or (2 if smoke else 64 if cuda else (2 if quick else 4))
    ibs = infer_batches or ((1,) if smoke else (1, 32) if cuda else (1, 4))
    amp = torch.bfloat16 if cuda else None  # CPU autocast in bf16 is slower than fp32 on most CPUs
    idtype = torch.bfloat16 if cuda else torch.float32
    rep_ms = rep_ms or (1500.0 if cuda else 2000.0)
    if smoke:
        compile_mode = "backend=eager"
    rows = []
    jobs = []
    for s in scales:
        for impl in ("eager", "ours"):
            jobs.append(("train", s, impl, tb))
    for s in scales:
        for b in ibs:
            for impl in ("eager", "ours"):
                jobs.append(("infer", s, impl, b))
    for s in scales:  # compile last: its compilation is the slowest and least predictable part
        jobs.append(("train", s, "compile", tb))
    for kind, s, impl, b in jobs:
        base = dict(op=f"e2e_{kind}", mode="train_step" if kind == "train" else "infer", impl=impl,
                    case=f"yolov10{s} b{b} {res}px", scale=s, batch=b, res=res, device=str(device),
                    dtype=f"amp-{str(amp).replace('torch.', '')}" if kind == "train" and amp else
                    str(idtype if kind == "infer" else torch.float32).replace("torch.", ""),
                    memory_format="channels_last" if cuda else "contiguous")
        est = 0 if smoke else (90.0 if impl == "compile" else 8.0) * (1 if cuda else 3)
        ok, why = budget.fits(est)
        if not ok:
            rows.append(make_row(status=why, **base))
            log(f"[e2e] {base['case']} {kind} {impl}: {why}")
            continue
        try:
            if kind == "train":
                fn, note = _train_setup(s, impl, device, b, res, amp, compile_mode, cuda)
            else:
                fn, note = _infer_setup(s, impl, device, b, res, idtype, cuda)
        except NotAvailable as e:
            rows.append(make_row(status=f"not available: {e}", **base))
            log(f"[e2e] {base['case']} {kind} {impl}: not available: {e}")
            continue
        except Exception as e:
            if smoke:
                raise
            rows.append(make_row(status=f"error: set-up {type(e).__name__}: {e}", **base))
            log(f"[e2e] {base['case']} {kind} {impl}: error {type(e).__name__}: {e}")
            continue
        rows.append(_measure(fn, note, base, device, smoke, rep_ms, compile_mode))
        del fn
        if cuda:
            torch.cuda.empty_cache()
    return rows


def _measure(fn, note, base, device, smoke, rep_ms, compile_mode):
    """The row of one set-up job: its first call (compilation) apart, then the timing (CUDA-graph replay for
    the small-batch inference rows on the GPU, falling back to plain timing when capture fails)."""
    kind, impl, b = base["op"][4:], base["impl"], base["batch"]
    try:
        t0 = time.perf_counter()
        fn()
        sync(device)
        first_s = time.perf_counter() - t0
        if smoke:
            log(f"[e2e] {base['case']} {kind:5s} {impl:8s} ran once in {first_s:.2f}s (smoke)")
            return make_row(status="ok (smoke: ran once, not timed)", note=note, **base)
        graph = device.type == "cuda" and kind == "infer" and b <= 8
        try:
            t = time_fn(fn, device, rep_ms, 200.0, cudagraph=graph)
        except Exception as e:
            if not graph:
                raise
            note += f"; CUDA-graph capture failed ({type(e).__name__}: {str(e)[:80]}), timed without"
            graph = False
            t = time_fn(fn, device, rep_ms, 200.0)
        peak = peak_extra_mb(fn, device)
    except Exception as e:
        if smoke:
            raise
        log(f"[e2e] {base['case']} {kind} {impl}: error {type(e).__name__}: {e}")
        return make_row(status=f"error: {type(e).__name__}: {str(e).splitlines()[0][:200]}", note=note, **base)
    ips = b / (t.median_ms * 1e-3)
    log(f"[e2e] {base['case']} {kind:5s} {impl:8s} {t.median_ms:9.2f} ms  {ips:8.1f} img/s"
        f"{'  (first call ' + format(first_s, '.1f') + ' s)' if impl == 'compile' else ''}  {note}")
    return make_row(**base, **timing_fields(t), images_per_s=ips, peak_extra_mb=peak, cudagraph=graph,
                    compile_s=first_s if impl == "compile" else None,
                    compile_mode=compile_mode if impl == "compile" else None, note=note)
