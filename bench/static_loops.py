"""The longest dependent loop of a launch, for the static report: the most iterations that one runtime loop
(`for ... in range(...)` or `tl.range(...)`) runs in one program, each iteration waiting on the previous one (a
running sum, a Welford merge, an accumulator). Read from the kernel's source and the @triton.jit functions it
calls (found in its module), with the launch's arguments, constexprs and config bound; assignments of values the
launch fixes are followed. Compile-time loops (tl.static_range) are unrolled and not counted; a branch on a
constexpr that the launch fixes is followed only where it goes. A loop whose start depends on the program (a
program id) counts from 0, its longest; a loop whose end or step the launch does not fix is unknown: the launch's
value is None (tests/test_gpu_budgets.py rejects that, so a new loop shape cannot slip past the budget)."""
import ast
import importlib
import inspect
import math
import textwrap
import types



class _Unknown(Exception):
    pass


def _eval(node, env):
    try:
        value = eval(compile(ast.Expression(node), "<loop bound>", "eval"), {"__builtins__": {}},
                     {"min": min, "max": max, **env})
    except Exception:
        raise _Unknown from None
    if not isinstance(value, (int, float)):  # bools too (a constexpr flag)
        raise _Unknown
    return value


def _trips(call, env):
    """Iterations of range(...) / tl.range(...) with the bounds in env."""
    args = call.args
    try:
        start = _eval(args[0], env) if len(args) > 1 else 0
    except _Unknown:
        start = 0  # a per-program start (a program id): the longest is from 0
    end = _eval(args[1] if len(args) > 1 else args[0], env)
    step = _eval(args[2], env) if len(args) > 2 else 1
    return max(0, math.ceil((end - start) / step))


class _Walker:
    def __init__(self, module):
        self.module = module
        self.longest = 0
        self.unknown = []

    def function(self, fn, env, depth=0):
        src = textwrap.dedent(inspect.getsource(fn.fn if hasattr(fn, "fn") else fn))
        tree = ast.parse(src).body[0]
        self.block(tree.body, dict(env), fn, depth)

    def block(self, stmts, env, fn, depth):
        for s in stmts:
            self.stmt(s, env, fn, depth)

    def stmt(self, s, env, fn, depth):
        if isinstance(s, ast.If):
            try:
                taken = _eval(s.test, env)
            except _Unknown:  # a runtime branch: both sides
                self.block(s.body + s.orelse, env, fn, depth)
            else:  # a branch on a constexpr the launch fixes
                self.block(s.body if taken else s.orelse, env, fn, depth)
            return
        if isinstance(s, (ast.For, ast.While, ast.With)):
            if isinstance(s, ast.For):
                self.loop(s, env, fn)
            self.block(s.body + getattr(s, "orelse", []), env, fn, depth)
            return
        for node in ast.walk(s):
            if isinstance(node, ast.Call):
                self.call(node, env, depth)
        targets = s.targets if isinstance(s, ast.Assign) else [s.target] if isinstance(s, ast.AnnAssign) else []
        if len(targets) == 1 and isinstance(targets[0], ast.Name) and s.value is not None:
            try:
                env[targets[0].id] = _eval(s.value, env)
            except _Unknown:
                env.pop(targets[0].id, None)

    def loop(self, s, env, fn):
        it = s.iter
        name = it.func.attr if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) else \
            getattr(getattr(it, "func", None), "id", "")
        if name != "range":  # tl.static_range: unrolled at compile time
            return
        try:
            self.longest = max(self.longest, _trips(it, env))
        except _Unknown:
            self.unknown.append(f"{fn.__name__}: loop at line {s.lineno} of its source")

    def call(self, node, env, depth):
        """Follow a call of a @triton.jit function of the kernel's module, its parameters bound to the arguments
        the launch fixes."""
        name = getattr(node.func, "id", None)
        callee = getattr(self.module, name, None) if name else None
        if callee is None or not hasattr(callee, "arg_names") or depth > 8:
            return
        bound = {"tl": env["tl"]}
        for pname, arg in list(zip(callee.arg_names, node.args)) + [(k.arg, k.value) for k in node.keywords]:
            try:
                bound[pname] = _eval(arg, env)
            except _Unknown:
                pass
        self.function(callee, bound, depth + 1)


def _tl(launch, config):
    """What of triton.language a loop bound may use: cdiv, minimum, maximum, and num_programs (the launch grid)."""
    grid = launch.grid
    if callable(grid):
        grid = grid({**launch.args, **launch.constexprs, **config})

    def num_programs(axis):
        if grid is None:
            raise _Unknown
        return tuple(grid)[axis] if axis < len(grid) else 1
    return types.SimpleNamespace(cdiv=lambda a, b: -(-a // b), minimum=min, maximum=max, num_programs=num_programs)


def longest_loop(launch, config):
    """(iterations of the longest runtime loop of one program of `launch` with `config`, [loops whose trip count
    the launch does not fix])."""
    env = {k: v for k, v in launch.args.items() if isinstance(v, (int, float))}
    env.update({k: v for k, v in launch.constexprs.items() if isinstance(v, (int, float))})
    env.update({k: v for k, v in config.items() if isinstance(v, (int, float))})
    walker = _Walker(importlib.import_module(launch.module))
    walker.function(launch.fn, {**env, "tl": _tl(launch, config)})
    return walker.longest, walker.unknown
