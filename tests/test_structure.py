"""The package's layering, read from its import graph: reference <- kernels (ops <- modules <- accelerate,
integrations) <- bench, one seam from the reference to the kernels, no import cycles, short functions."""
import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("yolov10", "yolov10_kernels", "bench")
SEAM = "yolov10.kernel_seam"
MAX_FUNCTION_LINES = 80
MAX_TRAINER_LINES = 450


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.lru_cache(maxsize=None)
def _sources():
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imported_names(module, path, tree):
    """Absolute dotted names of every import in a module, lazy (function-level) imports included."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts if is_package else parts[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


@functools.lru_cache(maxsize=None)
def _graph():
    """module -> set of project modules it imports (a package's __init__ counts only when imported by name)."""
    files = _sources()
    edges = {}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for name in _imported_names(mod, path, tree):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != mod and not mod.startswith(name + "."):
                targets.add(name)
        edges[mod] = targets
    return edges


def _cycles(edges, skip=lambda target: False):
    """Strongly connected components with more than one module (Tarjan), ignoring edges into `skip` targets."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if skip(w):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def _third_party_imports(module):
    path = _sources()[module]
    return {n.split(".")[0] for n in _imported_names(module, path, ast.parse(path.read_text()))}


def test_no_import_cycles():
    # importing a package's __init__ from inside the package is how re-exports work, not a cycle
    assert _cycles(_graph(), skip=lambda m: _sources()[m].name == "__init__.py") == []


def test_the_reference_reaches_the_kernels_through_one_seam():
    importers = sorted(m for m, ts in _graph().items()
                       if m.split(".")[0] == "yolov10" and any(t.split(".")[0] == "yolov10_kernels" for t in ts))
    assert importers == [SEAM]
    naming = sorted(str(p.relative_to(ROOT)) for m, p in _sources().items()
                    if m.split(".")[0] == "yolov10" and m != SEAM and "yolov10_kernels" in p.read_text())
    assert naming == [], "only the seam module may name yolov10_kernels"


@pytest.mark.parametrize("layer, forbidden", [
    ("yolov10_kernels.ops", ("yolov10", "yolov10_kernels.modules", "yolov10_kernels.accelerate",
                             "yolov10_kernels.integrations", "bench")),
    ("yolov10_kernels.modules", ("yolov10_kernels.accelerate", "yolov10_kernels.integrations", "bench")),
    ("yolov10", ("bench",)),
    ("yolov10_kernels", ("bench",)),
])
def test_layers_import_only_downwards(layer, forbidden):
    bad = sorted(f"{m} -> {t}" for m, ts in _graph().items() if m == layer or m.startswith(layer + ".")
                 for t in ts if any(t == f or t.startswith(f + ".") for f in forbidden))
    assert bad == []


# outside the integration, only the static report's builder of YOLO11/YOLO26 (run on the CPU machine, lazily)
ULTRALYTICS_BENCH = ("bench.static_memory",)


def test_ultralytics_is_imported_only_by_the_integration():
    importers = sorted(m for m in _sources() if "ultralytics" in _third_party_imports(m))
    assert all(m.startswith("yolov10_kernels.integrations") or m in ULTRALYTICS_BENCH for m in importers), importers


def test_trainer_holds_only_the_trainer():
    n = len((ROOT / "yolov10" / "trainer.py").read_text().splitlines())
    assert n <= MAX_TRAINER_LINES, f"yolov10/trainer.py has {n} lines"


def _is_triton_kernel(fn):
    return any("jit" in ast.unparse(d) for d in fn.decorator_list)


def test_no_long_functions():
    long = []
    for mod, path in _sources().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_triton_kernel(node):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


def test_cycle_finder_finds_a_cycle():
    """The checks above pass on an empty result: make sure the cycle finder can report one."""
    assert _cycles({"a": {"b"}, "b": {"a", "c"}, "c": set()}) == [["a", "b"]]


MAX_FILE_LINES = 700


def test_no_long_files_in_the_package():
    """No file of yolov10_kernels/ over MAX_FILE_LINES lines: one op per file in ops/ (its kernels may sit in a
    *_kernels.py beside it)."""
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / "yolov10_kernels").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def _calls(path):
    """Dotted names of every call in a file (`triton.autotune`, `config`, ...)."""
    def dotted(node):
        return f"{dotted(node.value)}.{node.attr}" if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return [dotted(n.func) for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]


ONE_CONVENTION = {"triton.autotune": "ops/utils.autotune", "triton.Config": "ops/utils.config"}


def test_one_autotune_wrapper_and_one_config_maker():
    """Autotuning goes through ops/utils.py (autotune, config: the register ceiling, the per-GPU prune) and
    nowhere else in the package."""
    utils = ROOT / "yolov10_kernels" / "ops" / "utils.py"
    bad = {str(p.relative_to(ROOT)): name for p in sorted((ROOT / "yolov10_kernels").rglob("*.py")) if p != utils
           for name in _calls(p) if name in ("triton.autotune", "triton.Config")}
    assert not bad, f"use {ONE_CONVENTION}: {bad}"


def test_the_interpreter_switch_is_read_at_run_time():
    """No module freezes TRITON_INTERPRET at import (`X = triton_interpreted()` at module level): tests and
    tools flip it per process and per call."""
    frozen = []
    for p in sorted((ROOT / "yolov10_kernels").rglob("*.py")):
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, ast.Assign) and any(isinstance(c, ast.Call) and ast.unparse(c.func) == "triton_interpreted"
                                                    for c in ast.walk(node.value)):
                frozen.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert not frozen, frozen


# The four eval-chain ops are tested together, as the blocks they make (tests/test_chain_eval.py)
SHARED_OP_TESTS = {"dw_pw_infer": "chain_eval", "dw_pw_pw_infer": "chain_eval", "pw_dw_infer": "chain_eval",
                   "dw_pw_dw_infer": "chain_eval"}


def _registers_an_op(path):
    return any(isinstance(n, ast.FunctionDef) and any("custom_op" in ast.unparse(d) for d in n.decorator_list)
               for n in ast.walk(ast.parse(path.read_text())))


def test_every_op_file_has_its_test_file():
    """tests/test_<op>.py for each ops/<op>.py that registers a custom op (ARCHITECTURE.md, adding an op)."""
    ops = [p.stem for p in sorted((ROOT / "yolov10_kernels" / "ops").glob("*.py")) if _registers_an_op(p)]
    assert "dwconv" in ops and "psa_v_norm" in ops, ops
    missing = [op for op in ops if not (ROOT / "tests" / f"test_{SHARED_OP_TESTS.get(op, op)}.py").exists()]
    assert not missing, f"ops without tests/test_<op>.py: {missing}"


def test_one_registration_style():
    """Ops are registered with the @torch.library.custom_op decorator, never as custom_op(...)(fn), which gives
    one function two names."""
    bad = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in sorted((ROOT / "yolov10_kernels").rglob("*.py"))
           for n in ast.walk(ast.parse(p.read_text()))
           if isinstance(n, ast.Call) and isinstance(n.func, ast.Call) and "custom_op" in ast.unparse(n.func.func)]
    assert not bad, bad
