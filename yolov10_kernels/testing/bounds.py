"""A bounds checker for the Triton interpreter (TRITON_INTERPRET=1): every masked-in load and store of a launch
must fall inside the storage of one of that launch's tensor arguments.

The interpreter runs a grid's programs one after another on numpy arrays of raw addresses and never faults on a
stray one: a load past a tensor reads whatever lies there, a store corrupts it, and the kernel tests still pass.
`install()` wraps the interpreter so that each launch (GridExecutor) records the byte ranges of its tensor
arguments' storages (untyped_storage: a channel slice counts with its parent), and each masked load / store /
atomic checks its masked-in addresses, element width included, against them: one min / max per access and one
binary search when they span a single storage (the common case), a full vectorised check otherwise. A violation
raises `OutOfBounds` naming the kernel, the program, the nearest argument and the byte offset into its storage,
and is recorded in `violations` (so a launcher that swallowed the error still fails the test that checks them).

tests/conftest.py installs it for the whole suite. It must stay importable without torch's CUDA or the rest of
the package (it imports only numpy and triton)."""
import contextlib
import os
import traceback

import numpy as np

_SKIP_FILES = (os.sep + "triton" + os.sep, __file__)


class OutOfBounds(AssertionError):
    """A masked-in access of an interpreted launch outside every tensor argument's storage."""


# The launches under way (a stack: one at a time in practice) and the violations seen since the last `take()`.
_launches = []
violations = []
_state = {"installed": False, "enabled": True}


class _Launch:
    """One launch: its kernel name and the sorted, merged byte ranges [start, end) of its arguments' storages."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.named = []  # (start, end, argument names), one per distinct storage
        self.starts = self.ends = np.zeros(0, np.uint64)

    def set_args(self, names_and_args):
        spans = {}

        def add(name, arg):
            if isinstance(arg, (tuple, list)):
                for i, a in enumerate(arg):
                    add(f"{name}[{i}]", a)
                return
            if not hasattr(arg, "untyped_storage"):
                arg = getattr(arg, "base", arg)  # a TensorWrapper (a reinterpreted dtype) or a TensorDescriptor
            if not hasattr(arg, "untyped_storage"):
                return
            s = arg.untyped_storage()
            if s.nbytes() == 0:  # an empty tensor: nothing may be read through it
                return
            key = (s.data_ptr(), s.data_ptr() + s.nbytes())
            spans.setdefault(key, []).append(name)

        for name, arg in names_and_args:
            add(name, arg)
        self.named = sorted((lo, hi, names) for (lo, hi), names in spans.items())
        merged = []  # distinct live storages do not overlap; merge any that do so one binary search decides
        for lo, hi, _ in self.named:
            if merged and lo < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.starts = np.array([m[0] for m in merged], np.uint64)
        self.ends = np.array([m[1] for m in merged], np.uint64)

    def check(self, addr, mask, width, what):
        mask = mask.astype(bool, copy=False)  # an int1 mask may arrive as int32 (a scalar condition & a block)
        if addr.shape != mask.shape:
            mask = np.broadcast_to(mask, addr.shape)
        sel = addr.ravel() if mask.all() else addr[mask]
        if sel.size == 0:
            return
        lo, hi = sel.min(), sel.max()
        i = int(np.searchsorted(self.starts, lo, side="right")) - 1
        if i >= 0 and int(hi) + width <= int(self.ends[i]):
            return  # every address lies between two inside one storage
        idx = np.searchsorted(self.starts, sel, side="right").astype(np.int64) - 1
        ok = (idx >= 0) & (sel + np.uint64(width) <= self.ends[np.maximum(idx, 0)])
        if ok.all():
            return  # the addresses span several arguments, each inside one
        self.fail(sel[~ok], sel.size, width, what)

    def fail(self, bad, total, width, what):
        from triton.runtime.interpreter import interpreter_builder
        a = int(bad[0])

        def distance(r):
            return 0 if r[0] <= a < r[1] else min(abs(a - r[0]), abs(a - r[1] + 1))
        lo, hi, names = min(self.named, key=distance, default=(0, 0, ["(no tensor argument)"]))
        off = a - lo
        where = f"{off - (hi - lo)} bytes past its end" if off >= hi - lo else (
            f"{-off} bytes before its start" if off < 0 else "straddling its end")
        line = next((f"{f.filename}:{f.lineno}" for f in reversed(traceback.extract_stack())
                     if not any(s in f.filename for s in _SKIP_FILES)), "?")
        msg = (f"kernel {self.kernel}, program {tuple(int(g) for g in interpreter_builder.grid_idx)}: masked-in {what} "
               f"of {width} bytes at byte offset {off} of argument {'/'.join(names)} (storage of {hi - lo} bytes: "
               f"{where}); {bad.size} of {total} masked-in addresses out of bounds; at {line}")
        violations.append(msg)
        raise OutOfBounds(msg)


def _width(ptrs):
    return max(1, ptrs.get_element_ty().primitive_bitwidth // 8)


def _check(ptrs, mask, what):
    """ptrs: the interpreter's TensorHandle of addresses; mask: a bool array of ptrs' shape (or broadcastable)."""
    if _launches and _state["enabled"]:
        _launches[-1].check(ptrs.data, mask, _width(ptrs), what)


def install():
    """Wrap the interpreter's launches, loads, stores and atomics (idempotent). False where triton is absent."""
    if _state["installed"]:
        return True
    try:
        from triton.runtime import interpreter as interp
    except Exception:  # no triton, or a build without the interpreter: nothing runs through it
        return False
    ge, ib = interp.GridExecutor, interp.InterpreterBuilder
    call, init_args = ge.__call__, ge._init_args_hst
    load, store, rmw, cas = ib.create_masked_load, ib.create_masked_store, ib.create_atomic_rmw, ib.create_atomic_cas

    def run(self, *args, **kwargs):
        _launches.append(_Launch(getattr(self.fn, "__name__", repr(self.fn))))
        try:
            return call(self, *args, **kwargs)
        except interp.InterpreterError as e:  # unwrap our own error from the interpreter's wrapping
            cause = e
            while cause is not None and not isinstance(cause, OutOfBounds):
                cause = cause.__cause__
            if cause is None:
                raise
            raise cause from None
        finally:
            _launches.pop()

    def init_args_hst(self, args_dev, kwargs):
        args_hst, kwargs_hst = init_args(self, args_dev, kwargs)
        if _launches:  # the host copies are what the kernel's pointers point into
            _launches[-1].set_args([*zip(self.arg_names, args_hst), *kwargs_hst.items()])
        return args_hst, kwargs_hst

    def masked_load(self, ptrs, mask, other, *a, **k):
        _check(ptrs, mask.data, "load")
        return load(self, ptrs, mask, other, *a, **k)

    def masked_store(self, ptrs, value, mask, *a, **k):
        _check(ptrs, mask.data, "store")
        return store(self, ptrs, value, mask, *a, **k)

    def atomic_rmw(self, op, ptr, val, mask, *a, **k):
        _check(ptr, mask.data, "atomic")
        return rmw(self, op, ptr, val, mask, *a, **k)

    def atomic_cas(self, ptr, cmp, val, *a, **k):
        _check(ptr, np.ones(ptr.data.shape, bool), "atomic")
        return cas(self, ptr, cmp, val, *a, **k)

    ge.__call__, ge._init_args_hst = run, init_args_hst
    ib.create_masked_load, ib.create_masked_store = masked_load, masked_store
    ib.create_atomic_rmw, ib.create_atomic_cas = atomic_rmw, atomic_cas
    _state["installed"] = True
    return True


@contextlib.contextmanager
def disabled():
    """Within: no checks (to show what an unchecked interpreter lets through)."""
    old = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = old


def take():
    """The violations recorded since the last call (and forget them)."""
    out = violations[:]
    violations.clear()
    return out
