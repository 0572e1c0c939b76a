"""python -m bench: the benchmark suite (per-op rows, assignment rows, end to end), CPU or CUDA.

Writes bench/results/<device>-<date>.json and .md (or under --out) and prints the short ratio table last."""
import argparse
import datetime as _dt
import importlib
import os
import sys
import time

SECTIONS = ("cib", "scdown", "cls_head", "psa", "assign", "ultralytics_assign", "e2e")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="yolov10-kernels benchmarks: every op (CIB block, SCDown, cls head, PSA, assignment o2m/o2o) "
                    "per mode (infer; train fwd, bwd, fwd+bwd) for eager PyTorch, torch.compile and ours, side "
                    "by side, ultralytics' assigner against ours (where ultralytics is installed), plus end-to-end training images/s and fused-model inference. CUDA: bf16 + "
                    "channels_last, triton do_bench (median/p20/p80), CUDA graphs for batch-1 latency rows, "
                    "peak memory and GB/s against the copy bandwidth measured in the same run. CPU: fp32, host "
                    "timer. The full GPU suite is budgeted to finish in under 8 minutes on an H100, --quick in "
                    "3; rows that would overrun are skipped with the reason.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    p.add_argument("--quick", action="store_true",
                   help="yolov10s target shapes only (GPU: infer b1 + train b64; CPU: 320 px, small batches), "
                        "torch.compile mode 'default', e2e yolov10n only; fits in ~3 min on an H100")
    p.add_argument("--ops", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run, from {','.join(SECTIONS)}")
    p.add_argument("--out", default=None, help="directory for <device>-<date>.json/.md (default bench/results)")
    p.add_argument("--scales", default=None, help="restrict per-op and e2e rows to these scales, e.g. 's' or 'n,s'")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode for the per-op baselines (default: max-autotune on CUDA, "
                        "'default' with --quick or on the CPU)")
    p.add_argument("--compile-scope", default="targets", choices=("targets", "all", "none"),
                   help="which per-op cases get torch.compile rows: the target shapes (yolov10s; PSA s and m), "
                        "every case, or none")
    p.add_argument("--e2e-compile-mode", default="default",
                   help="torch.compile mode for the end-to-end training rows (max-autotune on a whole model "
                        "takes minutes, beyond the budget)")
    p.add_argument("--budget", type=float, default=None,
                   help="wall-clock budget in seconds (default: 440 full; quick 160 on CUDA, 240 on the CPU)")
    p.add_argument("--rep-ms", type=float, default=None, help="timing window per row in ms")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for the per-op and e2e rows (default: torch's; the assignment rows "
                        "use their own 2, as issue 6 states)")
    p.add_argument("--smoke", action="store_true",
                   help="set-up check: tiny shapes (yolov10n at 64 px), every row's callable run once on the "
                        "device, nothing timed; torch.compile rows use the dynamo-only 'eager' backend")
    p.add_argument("--no-warmup", action="store_true",
                   help="CUDA: skip compiling every kernel variant up front (yolov10_kernels.warmup in parallel "
                        "workers); the first call of each row then compiles, outside its timing window")
    p.add_argument("--no-write", action="store_true", help="do not write result files")
    p.add_argument("--no-md", action="store_true",
                   help="write the .json alone (the GPU session: its files are counted); python -m bench.compare "
                        "FILE prints its tables")
    p.add_argument("--stem", default=None,
                   help="result file name without extension (default <device>-<UTC date-time>)")
    args = p.parse_args(argv)
    bad = [s for s in args.ops.split(",") if s and s not in SECTIONS]
    if bad:
        p.error(f"unknown --ops {bad}; choose from {','.join(SECTIONS)}")
    return args


def _configure_dynamo():
    import torch._dynamo
    cfg = torch._dynamo.config
    # every compiled module here is a fresh instance of a few module classes: without this, dynamo's
    # per-code-object recompile limit would silently fall back to eager after a handful of rows
    for name, value in (("cache_size_limit", 512), ("recompile_limit", 512), ("accumulated_cache_size_limit", 4096),
                        ("accumulated_recompile_limit", 4096)):
        if hasattr(cfg, name):
            setattr(cfg, name, value)


def _pick_device(name):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        raise SystemExit(2)
    return device


class _Run:
    """One invocation's settings, rows and result file (rewritten after every section, so a run killed from
    outside still leaves what it measured)."""

    def __init__(self, args, device):
        import torch
        from . import common
        self.args, self.device, self.t_start = args, device, time.monotonic()
        self.cuda = device.type == "cuda"
        self.sections = [s for s in args.ops.split(",") if s]
        self.scales = tuple(args.scales.split(",")) if args.scales else None
        self.compile_mode = args.compile_mode or ("max-autotune" if self.cuda and not args.quick else "default")
        self.budget = common.Budget(args.budget or (10**9 if args.smoke else 440.0 if not args.quick
                                                    else 160.0 if self.cuda else 240.0))
        self.env = common.environment(device)
        self.copy_bw = None
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.rows = []
        self.created = _dt.datetime.now(_dt.timezone.utc)
        self.out_dir = args.out or os.environ.get("BENCH_OUT") or common.RESULTS_DIR

    def result(self):
        import torch
        from . import common
        a = self.args
        return {
            "schema": common.SCHEMA,
            "created": self.created.strftime("%Y-%m-%d %H:%M UTC"),
            "env": self.env,
            "args": {"device": str(self.device), "quick": a.quick, "smoke": a.smoke, "sections": self.sections,
                     "scales": self.scales, "compile_mode": self.compile_mode, "compile_scope": a.compile_scope,
                     "e2e_compile_mode": a.e2e_compile_mode, "budget_s": self.budget.total_s,
                     "dtype": str(self.dtype).replace("torch.", ""),
                     "memory_format": "channels_last" if self.cuda else "contiguous", "rep_ms": a.rep_ms,
                     "threads": torch.get_num_threads()},
            "copy_bandwidth_gbs": self.copy_bw,
            "budget_log": self.budget.log,
            "wall_s": time.monotonic() - self.t_start,
            "rows": self.rows,
        }

    def save(self, final=False):
        from . import common, results
        if self.args.no_write:
            return
        paths = results.write_results(self.result(), self.out_dir, self.created.strftime("%Y-%m-%d-%H%M"),
                                      stem=self.args.stem, md=not self.args.no_md)
        if final:
            common.log(f"[bench] wrote {paths[0]}" + ("" if self.args.no_md else f" and {paths[1]}"))

    def sections_run(self):
        """Target shapes first (half the budget), then assignment, other shapes and end to end."""
        from . import e2e, ops
        a, op_sections = self.args, [s for s in self.sections if s in ops.OPS]
        first, rest = [], []
        if op_sections and a.smoke:
            first = ops.default_cases(self.device, smoke=True, ops=op_sections)
        elif op_sections:
            first, rest = ops.default_cases(self.device, quick=a.quick, compile_scope=a.compile_scope,
                                            scales=self.scales, ops=op_sections)
        kw = dict(dtype=self.dtype, channels_last=self.cuda, rep_ms=a.rep_ms, smoke=a.smoke,
                  compile_request=self.compile_mode, compile_backend="eager" if a.smoke else "inductor",
                  copy_bw=self.copy_bw)
        if first:
            self.budget.section("ops (target shapes)", 0.5)
            self.rows += ops.run(self.device, self.budget, first, **kw)
            self.save()
        if "assign" in self.sections and not a.smoke:
            self.budget.section("assign", 0.2)
            self.rows += run_rows("assign", self.device, self.budget, quick=a.quick)
            self.save()
        if "ultralytics_assign" in self.sections:
            self.budget.section("ultralytics_assign", 0.15)
            self.rows += run_rows("ultralytics_assign", self.device.type, self.budget, quick=a.quick, smoke=a.smoke)
            self.save()
        if rest:
            self.budget.section("ops (other scales and batches)", 0.2)
            self.rows += ops.run(self.device, self.budget, rest, **kw)
            self.save()
        if "e2e" in self.sections:
            self.budget.section("e2e", 1.0)
            e2e_scales = ("tiny",) if a.smoke else self.scales or (("n",) if a.quick else ("n", "s"))
            self.rows += e2e.run(self.device, self.budget, scales=e2e_scales, quick=a.quick, smoke=a.smoke,
                                 compile_mode=a.e2e_compile_mode, rep_ms=a.rep_ms)


def main(argv=None):
    args = parse_args(argv)
    import torch
    from . import common, compare

    device = _pick_device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    _configure_dynamo()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = _Run(args, device)
    env = run.env
    common.log(f"[bench] {env['device_name']} | torch {env['torch']} | triton {env['triton']} | CUDA {env['cuda']} "
               f"| cuDNN {env['cudnn']} | commit {env['git_commit']}")
    common.log(f"[bench] sections {run.sections}; {'smoke' if args.smoke else 'quick' if args.quick else 'full'}; "
               f"compile mode {run.compile_mode} (scope {args.compile_scope}); budget {run.budget.total_s:.0f}s")
    if device.type == "cuda" and not args.smoke and not args.no_warmup:
        from .warm import warm_up
        t0 = time.monotonic()
        w = warm_up(max(30.0, 0.25 * run.budget.total_s))
        common.log(f"[bench] warm-up (yolov10_kernels.warmup, before any timing): {w.get('status')}, "
                   f"{w.get('compiled', 0)} of {w.get('variants', 0)} kernel variants compiled in "
                   f"{time.monotonic() - t0:.0f}s")
    if not args.smoke:
        run.copy_bw = common.measure_copy_bandwidth(device)
        common.log(f"[bench] copy bandwidth {run.copy_bw:.0f} GB/s (read + write)")
    try:
        run.sections_run()
    finally:  # an interrupt (the GPU session's time limit) still leaves every row measured so far
        run.save(final=True)
    n_ok = len(compare.ok_rows(run.rows))
    common.log(f"[bench] {n_ok} timed rows, {len(run.rows) - n_ok} not timed (see status); "
               f"wall {time.monotonic() - run.t_start:.0f}s\n")
    res = run.result()
    print(compare.header(res))
    print(compare.short_tables(res), flush=True)  # last: the short ratio table
    return 0


def run_rows(section, device, budget, **kw):
    """The rows of bench/<section>.py's run(device, **kw) (assign, ultralytics_assign), or one row saying why
    there are none: the budget, a missing import (ultralytics is not installed on every machine), an error."""
    from .common import log, make_row
    ok, why = budget.fits(5.0)
    if not ok:
        log(f"[{section}] {why}")
        return [make_row(op=section, mode="-", impl="-", status=why)]
    try:
        rows = importlib.import_module(f"{__package__}.{section}").run(device, **kw)
    except ImportError as e:
        rows = [{"status": f"not available: {type(e).__name__}: {e}"}]
    except Exception as e:
        rows = [{"status": f"error: bench.{section}.run raised {type(e).__name__}: {e}"}]
    out = []
    for r in rows:
        r = {"op": section, "mode": "-", "impl": "-", "status": "ok", **r}
        if not r["status"].startswith("ok"):
            log(f"[{section}] {r['status']}")
        out.append(r)
    return out


if __name__ == "__main__":
    sys.exit(main())
