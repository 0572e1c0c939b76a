"""Config sweep phase of the GPU session: every config of every autotuned Triton kernel, timed by the kernel's
own autotuner at the target shapes, and recorded (sweep.json), so the config lists can be decided on the CPU
afterwards. The autotuners are found by walking yolov10_kernels.ops (no kernel is named here); each target
case runs once with every autotuner's cache emptied, and each fresh autotuning's `configs_timings`
(median, p20, p80 ms per config; inf = the config failed to compile or launch) is one item.

A dry run (the interpreter autotunes nothing) lists every autotuned kernel with its configs."""
import importlib
import pkgutil


def autotuners():
    """{"module.name": Autotuner} for every autotuned kernel in yolov10_kernels.ops."""
    from triton.runtime.autotuner import Autotuner
    import yolov10_kernels.ops as kops
    found = {}
    for info in pkgutil.iter_modules(kops.__path__):
        mod = importlib.import_module(f"{kops.__name__}.{info.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, Autotuner):
                found[f"{info.name}.{name}"] = obj
    return found


class _Recorder:
    """Wraps Autotuner.run: after a call that tuned a new key, the timings of every config are kept."""

    def __init__(self, tuners):
        self.tuners, self.fresh, self._orig = tuners, [], {}

    def __enter__(self):
        for name, t in self.tuners.items():
            self._orig[name] = t.run

            def run(*args, _t=t, _name=name, _orig=t.run, **kw):
                before = set(_t.cache)
                out = _orig(*args, **kw)
                for key in set(_t.cache) - before:
                    self.fresh.append({"kernel": _name, "key": list(key), "best": str(_t.cache[key]),
                                       "bench_s": getattr(_t, "bench_time", None),
                                       "configs": {str(c): list(v) for c, v in _t.configs_timings.items()}})
                return out
            t.run = run
        return self

    def __exit__(self, *exc):
        for name, t in self.tuners.items():
            t.run = self._orig[name]


def _listing(tuners):
    return [{"kernel": name, "key_names": list(t.keys), "configs": [str(c) for c in t.configs],
             "status": "listed (dry run: the interpreter autotunes nothing)"} for name, t in tuners.items()]


def run(session, f):
    from . import gpu_check, warm
    tuners = autotuners()
    f.set(kernels={name: [str(c) for c in t.configs] for name, t in tuners.items()})
    if session.dry_run:
        for item in _listing(tuners):
            f.add(item)
        return
    for case in gpu_check.target_cases(False):
        if session.left() < 0:
            f.add({"case": list(case), "status": "skipped: phase time budget"})
            continue
        for t in tuners.values():
            t.cache.clear()
        with _Recorder(tuners) as rec:
            _, secs, status = warm.run_case(case)
        for item in rec.fresh:
            f.add({"case": list(case), **item, "status": "ok"})
        if not rec.fresh:
            f.add({"case": list(case), "status": f"no autotuned launch ({status})", "seconds": secs})
        session.log(f"  sweep {case[:3]} {'train' if case[5] else 'eval'}: {len(rec.fresh)} tunings, {secs:.1f}s")
