"""Which Triton kernels a model launches, with which arguments and configs, found by running its real launchers
on fake CUDA tensors (FakeTensorMode: shapes, dtypes and strides, no data, no GPU needed).

Inside `fake_gpu()`:
- torch reports a CUDA device (`torch.cuda.is_available()`) whose profile is a given GPU's (`yolov10_kernels.gpus`:
  its SM count, shared memory, capability), so the drop-ins take their Triton path and the launchers choose the
  grids and configs that GPU would get;
- every yolov10_kernels custom op runs its real implementation on fake tensors (not its fake implementation), so
  the launcher code runs;
- a launch (`kernel[grid](...)`, or an autotuner's) is recorded as a `Launch` instead of running: the kernel, its
  arguments (tensors as dtypes), and the configs it may run with (an autotuner's configs after its pruning, or
  the launcher's own choice).
`capture(model, input_shapes, dtype, train)` runs a copy of a model once that way (train: forward + the custom ops'
backward). Nothing is compiled here (yolov10_kernels/warmup.py and bench/static_compile.py compile what was
recorded). Run it in a process without TRITON_INTERPRET: the launchers read it at import."""
import contextlib
import copy
import dataclasses
import importlib
import itertools
import pkgutil
import warnings
from typing import Optional

import torch

LAUNCH_KW = ("num_warps", "num_stages", "num_ctas", "maxnreg", "grid", "warmup")


@dataclasses.dataclass
class Launch:
    kernel: str  # the @triton.jit function's name
    module: str  # the module defining it
    fn: object  # the JITFunction
    args: dict  # non-constexpr parameters: ("tensor", dtype name, numel, 16-byte aligned) or the int/float value
    constexprs: dict  # constexpr parameters the launcher passed (flags, dtypes, dot precision)
    configs: list  # [{meta parameter: value, num_warps, num_stages}]: what this launch may run with
    tuned: bool  # True: an autotuner picks among `configs` at run time; False: the launcher chose the one config
    key: Optional[tuple] = None  # the autotuner's cache key (a new key re-tunes)
    tensor_bytes: int = 0  # bytes of its distinct tensor arguments but scratch (the byte model's one pass over each)
    context: str = ""  # what the harness was running (op, mode)
    device: Optional[str] = None  # the CUDA device the launcher made current around it (None: it made none current)
    grid: object = None  # the launch grid: a tuple, or grid(meta) -> tuple (an autotuned launch's)


def _describe(v):
    if isinstance(v, torch.Tensor):
        # Triton specialises a pointer on its 16-byte alignment; a view (a channel slice) may start off it
        aligned = v.storage_offset() * v.element_size() % 16 == 0
        return ("tensor", str(v.dtype)[6:], v.numel(), aligned)
    if hasattr(v, "primitive_bitwidth") or type(v).__module__.startswith("triton"):
        return ("tl", str(v))  # a tl.dtype constexpr
    return v


def _config_dict(cfg):
    d = dict(cfg.kwargs)
    d.update(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if cfg.maxnreg is not None:
        d["maxnreg"] = cfg.maxnreg
    return d


class Recorder:
    """Collects `Launch`es; `context` labels the ones recorded from now on."""

    def __init__(self):
        self.launches = []
        self.context = ""
        self.device = None

    @contextlib.contextmanager
    def on_device(self, device):
        """torch.cuda.device under fake_gpu: the launches within record `device` as the one made current."""
        prev, self.device = self.device, torch.device("cuda", device) if isinstance(device, int) else device
        try:
            yield
        finally:
            self.device = prev

    def record(self, fn, args, kwargs, configs, tuned, key=None):
        named = dict(zip(fn.arg_names, args))
        named.update({k: v for k, v in kwargs.items() if k not in LAUNCH_KW})
        constexpr_names = {p.name for p in fn.params if p.is_constexpr}
        meta = set().union(*(c.keys() for c in configs)) if configs else set()
        runtime = {k: _describe(v) for k, v in named.items() if k not in constexpr_names}
        consts = {k: _describe(v) for k, v in named.items() if k in constexpr_names and k not in meta}
        # the byte model's one pass over each distinct tensor; a program's scratch slot (scr_ptr) stays in L1/L2
        tensors = {id(v): v for k, v in named.items() if isinstance(v, torch.Tensor) and not k.startswith("scr")}
        nbytes = sum(v.numel() * v.element_size() for v in tensors.values())
        self.launches.append(Launch(fn.__name__, fn.fn.__module__, fn, runtime, consts, configs, tuned, key, nbytes,
                                    self.context, str(self.device) if self.device is not None else None,
                                    kwargs.get("grid")))


def direct_config(fn, kwargs):
    """The launcher's own choice: its meta parameters (BLOCK_*) plus warps and stages (Triton's defaults), and a
    register ceiling when it sets one."""
    names = {p.name for p in fn.params if p.is_constexpr}
    cfg = {k: v for k, v in kwargs.items() if k in names and k.startswith("BLOCK")}
    cfg.update(num_warps=kwargs.get("num_warps", 4), num_stages=kwargs.get("num_stages", 3))
    if kwargs.get("maxnreg") is not None:
        cfg["maxnreg"] = kwargs["maxnreg"]
    return cfg


@contextlib.contextmanager
def patched(obj, name, value):
    # a class's own attribute as stored (a classmethod stays a classmethod, not the method bound to this class)
    old = vars(obj)[name] if isinstance(obj, type) and name in vars(obj) else getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def custom_ops():
    """Every CustomOpDef of the Triton op modules."""
    from torch._library.custom_ops import CustomOpDef
    from . import ops
    modules = [importlib.import_module(f"{ops.__name__}.{m.name}") for m in pkgutil.iter_modules(ops.__path__)]
    return [v for m in modules for v in vars(m).values() if isinstance(v, CustomOpDef)]


def _aten_method(name):
    """Tensor.<name> whose Python binding guards the CUDA device (which a CPU-only torch refuses even for fake
    tensors): on that refusal the same aten op runs through torch.ops, which takes no guard."""
    orig = getattr(torch.Tensor, name)

    def method(self, *args, **kwargs):
        try:
            return orig(self, *args, **kwargs)
        except RuntimeError as e:
            if "not linked with support for cuda" not in str(e):
                raise
        if name == "__getitem__":
            return _basic_index(self, *args)
        if name == "contiguous":
            fmt = kwargs.get("memory_format", args[0] if args else torch.contiguous_format)
            return self if self.is_contiguous(memory_format=fmt) else torch.ops.aten.clone(self, memory_format=fmt)
        return getattr(torch.ops.aten, name)(self, *args, **kwargs)
    return method


def _basic_index(t, index):
    """t[index] for ints, slices, None and Ellipsis through aten view ops."""
    index = index if isinstance(index, tuple) else (index,)
    if Ellipsis in index:
        i = index.index(Ellipsis)
        fill = t.dim() - sum(x is not None for x in index if x is not Ellipsis)
        index = index[:i] + (slice(None),) * fill + index[i + 1:]
    dim = 0
    for x in index:
        if x is None:
            t = torch.ops.aten.unsqueeze.default(t, dim)
            dim += 1
        elif isinstance(x, int):
            t = torch.ops.aten.select.int(t, dim, x)
        elif isinstance(x, slice):
            t = torch.ops.aten.slice.Tensor(t, dim, x.start, x.stop, x.step or 1)
            dim += 1
        else:
            raise TypeError(f"fake-CUDA indexing supports ints, slices, None and ...; got {type(x).__name__}")
    return t


def _cudnn_memory_format(input, weight, backend):
    """The memory format of a conv's output as cuDNN picks it on a GPU: channels_last when the input or the weight
    has channels-innermost strides (a channel slice of a channels_last tensor counts, as in ATen's
    suggest_memory_format). Without CUDA, the fake conv would pick NCHW for a fake CUDA tensor."""
    def channels_innermost(t):
        return t.dim() == 4 and t.shape[1] > 1 and t.stride(1) == 1 and t.stride(3) >= t.shape[1]
    if channels_innermost(input) or channels_innermost(weight):
        return torch.channels_last
    return torch.contiguous_format


@contextlib.contextmanager
def fake_gpu(recorder, gpu="H200", op_wrapper=None, device=0):
    """See the module docstring. gpu: a yolov10_kernels.gpus profile or its name ("RTX3090", "sm_86");
    op_wrapper(op) -> the function that runs in place of its fake implementation; device: the index of the fake
    CUDA device the tensors live on (the current device stays 0, so a launcher that does not make its tensors'
    device current shows: the recorder notes what torch.cuda.device made current)."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction
    from . import gpus

    def jit_run(self, *args, grid, warmup, **kwargs):
        recorder.record(self, args, {**kwargs, "grid": grid}, [direct_config(self, kwargs)], tuned=False)

    def tuner_run(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        named = {**self.nargs, **kwargs}
        key = tuple(named[k] for k in self.keys if k in named)
        configs = [_config_dict(c) for c in self.prune_configs(kwargs)]
        self.nargs = None
        recorder.record(self.fn, args, kwargs, configs, tuned=len(self.configs) > 1, key=key)

    wrap = op_wrapper or (lambda op: op._init_fn)
    with contextlib.ExitStack() as stack:
        for obj, name, value in ((torch.cuda, "is_available", lambda: True), (torch.cuda, "current_device", lambda: 0),
                                 (torch.cuda, "is_bf16_supported", lambda *a, **k: True),  # torch.autocast asks
                                 (torch.cuda, "device", recorder.on_device),
                                 (JITFunction, "run", jit_run), (Autotuner, "run", tuner_run),
                                 (torch._C, "_conv_determine_backend_memory_format", _cudnn_memory_format),
                                 *((torch.Tensor, n, _aten_method(n)) for n in ("copy_", "contiguous", "__getitem__"))):
            stack.enter_context(patched(obj, name, value))
        for op in custom_ops():
            stack.enter_context(patched(op, "_abstract_fn", wrap(op)))
        stack.enter_context(patched(gpus, "_cuda_profiles", {0: gpus.resolve(gpu), device: gpus.resolve(gpu)}))
        mode = stack.enter_context(torch._subclasses.fake_tensor.FakeTensorMode(allow_non_fake_inputs=True))
        yield mode


def to_fake_cuda(module, mode, dtype, channels_last, device=0):
    """Module's parameters and buffers as fake tensors of `mode` on CUDA device `device` (floating ones in
    `dtype`), in place."""
    from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
    dev = torch.device("cuda", device)

    def fake(t):
        with unset_fake_temporarily():
            m = t.detach().to("meta", dtype=dtype if t.is_floating_point() else t.dtype)
            if channels_last and m.dim() == 4:
                m = m.contiguous(memory_format=torch.channels_last)
        return FakeTensor(mode, m, dev)
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[name] = torch.nn.Parameter(fake(p), requires_grad=False)  # autograd cannot hold fake CUDA
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = fake(b)
        if hasattr(m, "_clear_cache"):  # the drop-ins cache specs and folded weights of the old tensors
            m._clear_cache()
    return module


def _meta_input(shape, dtype, channels_last):
    t = torch.empty(shape, dtype=dtype, device="meta")
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t


def fake_input(mode, shape, dtype, channels_last, device=0):
    from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
    with unset_fake_temporarily():
        t = _meta_input(shape, dtype, channels_last)
    return FakeTensor(mode, t, torch.device("cuda", device))


def meta_copy(module):
    """A deep copy of `module` whose parameters and buffers are empty meta tensors of the same shapes and strides:
    capture needs no weights, and the model itself must stay as it is."""
    memo = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        m = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
        memo[id(t)] = torch.nn.Parameter(m, t.requires_grad) if isinstance(t, torch.nn.Parameter) else m
    return copy.deepcopy(module, memo)


class _Ctx:
    """Stands in for autograd's ctx when a custom op's registered backward is replayed by hand."""

    def __init__(self, inputs):
        self.needs_input_grad = tuple(isinstance(a, torch.Tensor) and a.is_floating_point() for a in inputs)
        self.saved_tensors = ()

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def set_materialize_grads(self, value):
        """The replay passes every output gradient (zeros): a superset of the kernels a real backward launches."""

    def mark_non_differentiable(self, *tensors):
        pass


class BackwardReplay:
    """op_wrapper that remembers the differentiable calls of a forward, to replay their backward: custom ops with a
    registered autograd, and the package's autograd.Functions (the ops that update running statistics in place)."""

    def __init__(self):
        self.calls = []

    def __call__(self, op):
        impl = op._init_fn

        def run(*args, **kwargs):
            out = impl(*args, **kwargs)
            if op._backward_fn is not None:
                ctx = _Ctx(args)
                op._setup_context_fn(ctx, args, out)
                self.calls.append((op._backward_fn, ctx, out))
            return out
        return run

    @contextlib.contextmanager
    def functions(self):
        """Within: an autograd.Function of yolov10_kernels.ops runs its forward with a stand-in ctx, recorded."""
        base = torch.autograd.Function.apply.__func__

        def apply(cls, *args):
            if not cls.__module__.startswith("yolov10_kernels.ops"):
                return base(cls, *args)
            ctx = _Ctx(args)
            out = cls.forward(ctx, *args)
            self.calls.append((cls.backward, ctx, out))
            return out
        with patched(torch.autograd.Function, "apply", classmethod(apply)):
            yield

    def backward(self):
        """Each recorded call's backward, last first, with zero output gradients (autograd cannot run on fake CUDA
        tensors in a CPU-only torch; the backward kernels are all this needs)."""
        for backward, ctx, out in reversed(self.calls):
            outs = out if isinstance(out, tuple) else (out,)
            backward(ctx, *(torch.zeros_like(o) for o in outs))
        self.calls = []


def dropin_calls(model, input_shapes, dtype, train, channels_last):
    """[(drop-in, input shapes)] for every call, in one forward of `model`, of a drop-in that launches kernels itself
    (holds no other drop-in), found on a meta copy running the reference forward. The calls are captured one by
    one: what the model does between them (its input checks, the head's top-k) may need real data."""
    from .modules.dropin import DropIn
    meta = meta_copy(model).to(dtype).train(train)
    leaves = [m for m in meta.modules() if isinstance(m, DropIn) and m.backend != "reference"
              and not any(isinstance(c, DropIn) for c in m.modules() if c is not m)]
    if not leaves:
        return []
    backends = [m.backend for m in leaves]
    calls, hooks = [], []
    for m in leaves:
        hooks.append(m.register_forward_pre_hook(lambda mod, args: calls.append((mod, [tuple(a.shape) for a in args]))))
        m.set_backend("reference")  # no kernel runs on meta tensors
    try:
        with torch.no_grad():
            meta(*(_meta_input(s, dtype, channels_last) for s in input_shapes))
    finally:
        for h in hooks:
            h.remove()
        for m, b in zip(leaves, backends):
            m.set_backend(b)
    return calls


def capture(model, input_shapes, dtype, train=False, channels_last=True, gpu="H200", recorder=None, amp=False,
            device=0):
    """The Triton kernel launches of one call of `model`, found by running its real launchers on fake CUDA tensors.

    Each drop-in that launches kernels itself (holds no other drop-in; backend not "reference") is run once, on a
    meta copy turned into fake CUDA tensors inside fake_gpu(), at the inputs it gets in one forward of the model:
    the eval forward under no_grad, or with train=True the train forward and then its custom ops' backward
    (replayed with zero output gradients). Nothing runs on a GPU and nothing is compiled. Run it in a process
    without TRITON_INTERPRET: the launchers read it at import.

    Arguments:
        model: torch.nn.Module, a drop-in or a model holding some (accelerate(model)), on any device and in any
            dtype (only meta copies run); left as it is.
        input_shapes: list of tuples of ints, the shape of each of the model's inputs, e.g.
            [(batch, 3, height, width)].
        dtype: torch.dtype (torch.float16, torch.bfloat16, torch.float32), of the parameters and activations
            (with amp: of the activations only).
        train: bool. False (default): the eval forward under no_grad; True: the train forward + backward.
        channels_last: bool. 4-d parameters and inputs in channels_last layout. Default True.
        gpu: the GPU whose launches to reproduce (its grids and configs): a yolov10_kernels.gpus profile, a name
            such as "RTX3090", or a compute capability such as "sm_86". Default "H200".
        recorder: None or Recorder, collects the launches (appended to what it holds). Default None: a new one.
        amp: bool. Mixed precision as the trainer runs it: float32 parameters, the forward under
            torch.autocast(dtype). Default False.
        device: int, the fake CUDA device's index the tensors live on (see fake_gpu). Default 0.

    Returns:
        launches: list of Launch, recorder.launches (kernel, module, fn, args, constexprs, configs, tuned, key,
            tensor_bytes, context, device, grid); [] for a model without such drop-ins and a new recorder.

    Raises:
        ValueError: an unknown gpu (raised once there is a drop-in call to capture).
    """
    recorder = recorder or Recorder()
    param_dtype = torch.float32 if amp else dtype
    for module, shapes in dropin_calls(model, input_shapes, param_dtype, train, channels_last):
        replay = BackwardReplay()
        fake = meta_copy(module)
        with fake_gpu(recorder, gpu, op_wrapper=replay, device=device) as mode, replay.functions(), \
                torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Accessing the data pointer of FakeTensor")  # the drop-ins' fold cache
            fake = to_fake_cuda(fake, mode, param_dtype, channels_last, device).train(train)
            with torch.autocast("cuda", dtype, enabled=amp):  # a drop-in's input is a conv output: in `dtype`
                fake(*(fake_input(mode, s, dtype, channels_last, device) for s in shapes))
            if train:
                replay.backward()
    return recorder.launches
