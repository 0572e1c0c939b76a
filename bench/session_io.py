"""What every phase of the GPU session (bench/gpu_session.py) shares: its result file in $OUT, rewritten whole
(atomically) after every item so that a timeout or a signal keeps what was measured, the session log, and
the conversion of SIGTERM into an exception so that `finally` blocks still flush."""
import json
import math
import signal
import sys
import time
from pathlib import Path

from .results import write_atomic

LOG_NAME = "session.log"


def _jsonable(v):
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else round(v, 6)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, str)):
        return v
    return str(v)  # dtypes, devices, triton configs, paths


class Interrupted(BaseException):
    """SIGTERM (the session's or the device tool's time limit) inside a phase."""


def raise_on_sigterm():
    def handler(signum, frame):
        raise Interrupted(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)


class Session:
    """The settings one phase runs under: $OUT, dry run or not, and the wall-clock deadline of the phase."""

    def __init__(self, out, dry_run, deadline):
        self.out, self.dry_run, self.deadline = Path(out), dry_run, deadline
        self.out.mkdir(parents=True, exist_ok=True)

    def left(self):
        return self.deadline - time.time()

    def log(self, msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(self.out / LOG_NAME, "a") as f:
            f.write(line + "\n")


class PhaseFile:
    """One phase's JSON file: {"phase", "dry_run", "status", "wall_s", ..., "items": [...]}; `add` appends an
    item and rewrites the file, `finish` records how the phase ended. name None: a phase that writes its own
    result file (bench), whose items are only counted here."""

    def __init__(self, session, phase, name, **header):
        self.session, self.path = session, (session.out / name if name else None)
        self.t0 = time.time()
        self.data = {"phase": phase, "dry_run": session.dry_run, "status": "running", "wall_s": 0.0, **header,
                     "items": []}
        self.flush()

    def add(self, item):
        self.data["items"].append(item)
        self.flush()

    def set(self, **kw):
        self.data.update(kw)
        self.flush()

    def flush(self):
        self.data["wall_s"] = time.time() - self.t0
        if self.path is not None:
            write_atomic(self.path, json.dumps(_jsonable(self.data), indent=1) + "\n")

    def finish(self, status):
        self.data["status"] = status
        self.flush()


def run_phase(session, phase, name, body, **header):
    """Run body(session, file) with its file open; any ending (an error, a signal, the deadline) is recorded
    in the file's status. Returns the status."""
    f = PhaseFile(session, phase, name, **header)
    status = "ok"
    try:
        body(session, f)
    except (KeyboardInterrupt, Interrupted) as e:
        status = f"interrupted ({type(e).__name__}: {e})"
    except Exception as e:  # a broken phase is recorded; the session goes on with the next one
        import traceback
        status = f"error: {type(e).__name__}: {e}"
        session.log(traceback.format_exc(limit=-6))
    finally:
        f.finish(status)
    session.log(f"phase {phase}: {status} ({f.data['wall_s']:.1f}s, {len(f.data['items'])} items)")
    return status


def fail_count(items):
    return sum(1 for it in items if str(it.get("status", "")).startswith(("fail", "error")))


def eprint(*a):
    print(*a, file=sys.stderr, flush=True)
