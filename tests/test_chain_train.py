"""Training-path fused conv chains (yolov10_kernels.ops.chain_train / dwconv / pwconv, the chain read by
yolov10_kernels.modules.chain) against the reference modules in train mode. On the CPU the Triton kernels run
through TRITON_INTERPRET=1 (tests/conftest.py), so the shapes are tiny; odd H/W, channel counts that are not
multiples of 16, batch 1 and 3, stride 2 on odd sizes, NCHW and channels_last. Every buffer the ops allocate is NaN-poisoned, so an element a kernel forgets to write
fails the comparison."""
import copy
import dataclasses
import os

import pytest
import torch
import torch.nn as nn

pytest.importorskip("triton")

from yolov10.modules import CIB, Conv, SCDown  # noqa: E402
from yolov10_kernels.modules.chain import read_chain  # noqa: E402
from yolov10_kernels.ops.batchnorm import BatchNormSpec  # noqa: E402
from yolov10_kernels.ops.chain_train import chain_train  # noqa: E402
from yolov10_kernels.ops.dwconv import dw_conv_bn  # noqa: E402
from yolov10_kernels.ops.pwconv import pw_conv_bn  # noqa: E402
from helpers import TF32_EPS, assert_close, randomize_bn

CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
DEV = "cuda" if CUDA else "cpu"
# the fp32 parity tests compare with exact fp32 references: TF32 off (test_chain_fp32_tf32_default: the default)
pytestmark = pytest.mark.usefixtures("exact_fp32")


# ------------------------------------------------------------------------------------------------ helpers
def cls_head(c, c3, nc):
    """One v10Detect cv3[i] branch: Seq(Seq(DW3x3, PW), Seq(DW3x3, PW), Conv2d 1x1 with bias)."""
    return nn.Sequential(nn.Sequential(Conv(c, c, 3, g=c), Conv(c, c3, 1)),
                         nn.Sequential(Conv(c3, c3, 3, g=c3), Conv(c3, c3, 1)), nn.Conv2d(c3, nc, 1))


def make_block(kind, c, dtype=torch.float32, device=DEV):
    """(module, layers(module), residual) for one chain kind."""
    if kind == "cib":
        m = CIB(c, c, shortcut=True, e=1.0, lk=False)
        return randomize_bn(m).to(device, dtype).train(), (lambda mod: list(mod.cv1)), True
    if kind == "cib_lk":
        m = CIB(c, c, shortcut=True, e=1.0, lk=True)
        return randomize_bn(m).to(device, dtype).train(), (lambda mod: list(mod.cv1)), True
    if kind == "scdown":
        m = SCDown(c, c + 4, 3, 2)
        return randomize_bn(m).to(device, dtype).train(), (lambda mod: [mod.cv1, mod.cv2]), False
    if kind == "cls":
        m = cls_head(c, 12, 5)
        return randomize_bn(m).to(device, dtype).train(), (lambda mod: mod), False
    raise ValueError(kind)


def conv_chain_train(x, layers, residual):
    """The train path of a drop-in: the chain read off the reference layers, then the fused op."""
    return chain_train(x, read_chain(layers), residual)


def run_pair(kind, c, shape, dtype=torch.float32, channels_last=False, seed=0):
    """Fused vs reference on identical copies: forward, x grad, every parameter grad, every buffer."""
    torch.manual_seed(seed)
    ref, layers, residual = make_block(kind, c, dtype)
    mine = copy.deepcopy(ref)
    x = torch.randn(*shape, dtype=dtype, device=DEV)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    xr = x.clone().requires_grad_()
    xm = x.clone().requires_grad_()
    out_ref = ref(xr)
    out = conv_chain_train(xm, layers(mine), residual)
    go = torch.randn_like(out_ref)
    (out_ref * go).sum().backward()
    (out * go).sum().backward()
    return ref, mine, out_ref, out, xr, xm


CASES = [  # kind, channels, x shape, channels_last
    ("cib", 6, (3, 6, 7, 9), False),
    ("cib_lk", 6, (1, 6, 5, 6), True),
    ("scdown", 6, (3, 6, 7, 9), False),
    ("scdown", 10, (1, 10, 5, 6), True),
    ("cls", 6, (1, 6, 5, 6), True),
    ("cls", 10, (3, 10, 7, 9), False),
]


# ------------------------------------------------------------------------------------------------ chains
@pytest.mark.parametrize("kind,c,shape,cl", CASES, ids=[f"{k}-c{c}-{'x'.join(map(str, s))}-{'cl' if cl else 'nchw'}"
                                                         for k, c, s, cl in CASES])
def test_chain_matches_reference_fp32(kind, c, shape, cl):
    check_chain(kind, c, shape, cl)


def check_chain(kind, c, shape, cl):
    """run_pair in fp32: the output (shape, dtype, memory format, values), x.grad, every parameter's gradient and
    every buffer (running statistics, num_batches_tracked) against the reference."""
    ref, mine, out_ref, out, xr, xm = run_pair(kind, c, shape, torch.float32, cl)
    assert out.shape == out_ref.shape and out.dtype == out_ref.dtype
    assert out.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert_close(out, out_ref, rel=1e-4)
    assert_close(xm.grad, xr.grad, rel=1e-4, what="x.grad")
    for (name, p), (_, q) in zip(mine.named_parameters(), ref.named_parameters()):
        assert p.grad is not None, name
        assert_close(p.grad, q.grad, rel=1e-4, what=name)
    for (name, b), (_, r) in zip(mine.named_buffers(), ref.named_buffers()):
        if name.endswith("num_batches_tracked"):
            assert b.item() == r.item() == 4, name
        else:
            assert_close(b, r, rel=1e-5, what=name)


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
def test_chain_channel_slice_input(cl):
    check_channel_slice(cl)


def check_channel_slice(cl, batch=2):
    """C2fCIB feeds its CIBs a channel chunk of a larger tensor: a non-contiguous view, read in place (the second
    chunk: its last element is its parent's)."""
    torch.manual_seed(12)
    ref, layers, residual = make_block("cib", 4)
    mine = copy.deepcopy(ref)
    big = torch.randn(batch, 8, 5, 7, device=DEV)
    if cl:
        big = big.to(memory_format=torch.channels_last)
    br, bm = big.clone().requires_grad_(), big.clone().requires_grad_()
    out_ref = ref(br.chunk(2, 1)[1])
    out = conv_chain_train(bm.chunk(2, 1)[1], layers(mine), residual)
    out_ref.square().sum().backward()
    out.square().sum().backward()
    assert_close(out, out_ref, rel=1e-4)
    assert_close(bm.grad, br.grad, rel=1e-4, what="x.grad")
    for (name, p), (_, q) in zip(mine.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, q.grad, rel=1e-4, what=name)


@pytest.mark.skipif(not CUDA, reason="TF32 is a GPU path (the interpreter's fp32 dots are exact)")
@pytest.mark.parametrize("kind", ["cib", "scdown", "cls"])
def test_chain_fp32_tf32_default(kind, monkeypatch):
    """fp32 with torch's default switches (cuDNN TF32 on): the kernels' dots and the reference convs both round
    their inputs to TF32 (TF32_EPS); per layer each side is within a few TF32_EPS of the exact result relative to
    the layer's largest value, and the chains have 3-5 layers: 32 TF32_EPS (about 1.6e-2) bounds the two apart."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    ref, mine, out_ref, out, xr, xm = run_pair(kind, 10, (3, 10, 7, 9), torch.float32)
    rel = 32 * TF32_EPS
    assert_close(out, out_ref, rel=rel)
    assert_close(xm.grad, xr.grad, rel=rel, what="x.grad")
    for (name, p), (_, q) in zip(mine.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, q.grad, rel=rel, what=name)


@pytest.mark.parametrize("kind", ["cib", "cib_lk"])
def test_chain_matches_reference_fp64(kind):
    ref, mine, out_ref, out, xr, xm = run_pair(kind, 4, (2, 4, 5, 7), torch.float64)
    assert_close(out, out_ref, rel=1e-10)
    assert_close(xm.grad, xr.grad, rel=1e-10, what="x.grad")
    for (name, p), (_, q) in zip(mine.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, q.grad, rel=1e-10, what=name)
    for (name, b), (_, r) in zip(mine.named_buffers(), ref.named_buffers()):
        assert_close(b, r, rtol=1e-12, atol=1e-12, what=name)


def test_chain_running_stats_across_steps():
    """Two steps in a row (momentum update twice, num_batches_tracked 3 -> 5); momentum None uses the
    cumulative average, like nn.BatchNorm2d."""
    torch.manual_seed(1)
    ref, layers, residual = make_block("scdown", 6)
    ref.cv2.bn.momentum = None
    mine = copy.deepcopy(ref)
    for _ in range(2):
        x = torch.randn(2, 6, 5, 7, device=DEV)
        ref(x)
        conv_chain_train(x, layers(mine), residual)
    for (name, b), (_, r) in zip(mine.named_buffers(), ref.named_buffers()):
        assert_close(b.float(), r.float(), rtol=1e-5, atol=1e-6, what=name)
    assert mine.cv1.bn.num_batches_tracked.item() == 5


def test_chain_eval_mode_bn_uses_running_stats():
    torch.manual_seed(2)
    ref, layers, residual = make_block("cib", 4)
    ref.eval()
    mine = copy.deepcopy(ref)
    x = torch.randn(1, 4, 5, 6, device=DEV)
    xr, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out = ref(xr), conv_chain_train(xm, layers(mine), residual)
    out_ref.sum().backward()
    out.sum().backward()
    assert_close(out, out_ref, rel=1e-4)
    assert_close(xm.grad, xr.grad, rel=1e-4, what="x.grad")
    for (name, b), (_, r) in zip(mine.named_buffers(), ref.named_buffers()):
        assert_close(b, r, what=name)


def test_chain_takes_plain_batchnorm_specs():
    """The op takes plain specs as well as the modules' BNs: BatchNormSpecs (the tensors and hyper-parameters,
    no module) give the reference output and update the same running statistics."""
    torch.manual_seed(14)
    ref, layers, residual = make_block("cib_lk", 4)
    mine = copy.deepcopy(ref)
    plain = lambda bn: None if bn is None else BatchNormSpec.of(bn)  # noqa: E731
    specs = [dataclasses.replace(s, bn=plain(s.bn), bn2=plain(s.bn2)) for s in read_chain(layers(mine))]
    assert any(isinstance(s.bn2, BatchNormSpec) for s in specs)
    x = torch.randn(2, 4, 5, 6, device=DEV)
    assert_close(chain_train(x, specs, residual), ref(x), rel=1e-4)
    for (name, b), (_, r) in zip(mine.named_buffers(), ref.named_buffers()):
        assert_close(b, r, rel=1e-5, what=name)


# ------------------------------------------------------------------------------------------------ drop-in
def test_dropin_reads_its_chain_once_and_follows_the_live_layers(monkeypatch):
    """A drop-in reads its layers once and re-reads them only after train()/eval(), load_state_dict (assign=True
    replaces the parameters) or .to() (which replaces the BN buffers); running statistics land in the module's
    live buffers, and a BN switched to eval on its own (no drop-in method runs) is seen at once."""
    from yolov10_kernels.modules import dropin
    from yolov10_kernels.modules.scdown import FusedSCDown
    reads = []
    monkeypatch.setattr(dropin, "read_chain", lambda layers: reads.append(1) or read_chain(layers))
    torch.manual_seed(13)
    ref, _, _ = make_block("scdown", 6, torch.float64)
    mine = FusedSCDown.from_module(copy.deepcopy(ref), backend="triton")

    def step(dtype, rel):
        x = torch.randn(2, 6, 5, 7, device=DEV, dtype=dtype)
        assert_close(mine(x), ref(x), rel=rel)
        for (name, b), (_, r) in zip(mine.named_buffers(), ref.named_buffers()):
            assert_close(b, r, rel=min(rel, 1e-5), what=name)
    step(torch.float64, 1e-10)
    step(torch.float64, 1e-10)
    mine.cv2.bn.eval(), ref.cv2.bn.eval()  # a frozen BN: normalises with, and leaves, its running statistics
    step(torch.float64, 1e-10)
    assert len(reads) == 1
    mine.train(), ref.train()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1)
    mine.load_state_dict(copy.deepcopy(ref.state_dict()), assign=True)
    step(torch.float64, 1e-10)
    assert len(reads) == 2
    mine.float(), ref.float()
    step(torch.float32, 1e-4)
    assert len(reads) == 3


# ------------------------------------------------------------------------------------------------ memory
def saved_bytes(fn):
    """Bytes saved for backward by fn(), each storage counted once (saved_tensors_hooks)."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[(s.data_ptr(), s.nbytes())] = s.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


@pytest.mark.parametrize("lk", [False, True], ids=["cib", "cib_lk"])
def test_cib_saved_memory_at_most_40_percent(lk):
    torch.manual_seed(3)
    m = randomize_bn(CIB(8, 8, shortcut=True, e=1.0, lk=lk)).to(DEV).train()
    x = torch.randn(2, 8, 16, 16, device=DEV, requires_grad=True)
    ref_bytes, _ = saved_bytes(lambda: m(x))
    mine_bytes, _ = saved_bytes(lambda: conv_chain_train(x, list(m.cv1), True))
    ratio = mine_bytes / ref_bytes
    print(f"CIB lk={lk}: saved {mine_bytes} B vs reference {ref_bytes} B: {ratio:.3f}")
    assert ratio <= 0.40


# ------------------------------------------------------------------------------------------------ gradcheck
def test_gradcheck_chain_fp64():
    """The composition: BN statistics -> scale/shift -> the next conv's prologue, and the last conv's
    statistics-only + epilogue passes with the residual (RepVGGDW's weight merge is checked in fp64 above)."""
    torch.manual_seed(6)
    m = nn.Sequential(Conv(2, 3, 1), Conv(3, 3, 3, g=3), Conv(3, 2, 1), Conv(2, 2, 3, g=2))
    m = randomize_bn(m).double().train().to(DEV)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, device=DEV, requires_grad=True)
    params = list(m.parameters())

    def f(x, *ps):
        return conv_chain_train(x, m, True)
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, fast_mode=True)


# ------------------------------------------------------------------------------------------------ opcheck
@pytest.mark.parametrize("mode", ["last", "frozen_small_bn"])
def test_repvgg_as_last_layer_and_with_a_frozen_bn(mode):
    """A RepVGGDW ending a chain (its act and the residual in torch after the op), and one whose small branch's BN
    is in eval mode (running statistics: the multi-op path): values, every gradient and the running statistics."""
    from yolov10.modules import RepVGGDW
    torch.manual_seed(17)
    ref = randomize_bn(nn.Sequential(Conv(4, 4, 1), RepVGGDW(4))).to(DEV).train()
    if mode == "frozen_small_bn":
        ref = nn.Sequential(*ref, Conv(4, 4, 1))
        ref[1].conv1.bn.eval()
    mine = copy.deepcopy(ref)
    x = torch.randn(2, 4, 5, 6, device=DEV)
    xr, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out = ref(xr) + xr, conv_chain_train(xm, list(mine), True)
    go = torch.randn_like(out_ref)
    (out_ref * go).sum().backward()
    (out * go).sum().backward()
    assert_close(out, out_ref, rel=1e-4)
    assert_close(xm.grad, xr.grad, rel=1e-4, what="x.grad")
    for (name, p), (_, q) in zip(mine.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, q.grad, rel=1e-4, what=name)
    for (name, b), (_, r) in zip(mine.named_buffers(), ref.named_buffers()):
        assert_close(b.float(), r.float(), rel=1e-5, what=name)


# ------------------------------------------------------------------------------------------------ compile
@pytest.mark.parametrize("kind", ["scdown", "cib_lk"])  # the last-layer op; the RepVGGDW op
def test_torch_compile_fullgraph(kind):
    torch.manual_seed(9)
    ref, layers, residual = make_block(kind, 4)
    mine = copy.deepcopy(ref)
    x = torch.randn(2, 4, 5, 5, device=DEV)

    def step(x, mod):
        return conv_chain_train(x, layers(mod), residual)
    compiled = torch.compile(step, fullgraph=True)
    xr, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref = step(xr, ref)
    out = compiled(xm, mine)
    out_ref.square().sum().backward()
    out.square().sum().backward()
    assert_close(out, out_ref, rel=1e-5)
    assert_close(xm.grad, xr.grad, rel=1e-5, what="x.grad")
    for (name, p), (_, q) in zip(mine.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, q.grad, rel=1e-5, what=name)
    for (name, b), (_, r) in zip(mine.named_buffers(), ref.named_buffers()):
        assert_close(b.float(), r.float(), rtol=1e-6, atol=1e-7, what=name)


# ------------------------------------------------------------------------------------------------ errors
def test_bad_inputs_name_the_problem(monkeypatch):
    m, layers, residual = make_block("scdown", 4)
    with pytest.raises(ValueError, match="channels"):
        conv_chain_train(torch.randn(1, 5, 4, 4, device=DEV), layers(m), residual)
    with pytest.raises(TypeError, match="floating"):
        conv_chain_train(torch.ones(1, 4, 4, 4, dtype=torch.int32, device=DEV), layers(m), residual)
    with pytest.raises(ValueError, match="residual"):
        conv_chain_train(torch.randn(1, 4, 4, 4, device=DEV), layers(m), True)
    with pytest.raises(ValueError, match="more than 1 value"):
        conv_chain_train(torch.randn(1, 4, 1, 1, device=DEV), layers(m), residual)
    with pytest.raises(ValueError, match="unsupported module"):
        conv_chain_train(torch.randn(1, 4, 4, 4, device=DEV), [nn.ReLU()], False)
    with pytest.raises(ValueError, match="input channels"):
        conv_chain_train(torch.randn(1, 4, 4, 4, device=DEV), [m.cv1, Conv(3, 3, 3, g=3)], False)
    with pytest.raises(ValueError, match="device"):  # weights on another device than x
        conv_chain_train(torch.randn(1, 4, 4, 4, device=DEV), [Conv(4, 4, 3, g=4).to("meta")], False)
    with pytest.raises(ValueError, match="weight"):
        dw_conv_bn(torch.randn(1, 4, 4, 4, device=DEV), torch.randn(5, 1, 3, 3, device=DEV), None, None, None, None,
                   None, 1, False, False, True, True)
    with pytest.raises(ValueError, match="C_in"):
        pw_conv_bn(torch.randn(1, 4, 4, 4, device=DEV), torch.randn(5, 3, 1, 1, device=DEV), None, None, None, False,
                   True)
    if DEV == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            conv_chain_train(torch.randn(1, 4, 4, 4), layers(m), residual)


# ------------------------------------------------------------------------------------------------ export
def test_torch_export_runs_and_updates_running_stats():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = randomize_bn(CIB(4, 4, shortcut=True, e=1.0, lk=True))

        def forward(self, x):
            return conv_chain_train(x, list(self.b.cv1), True)
    torch.manual_seed(11)
    m = Block().to(DEV).train()
    ref = copy.deepcopy(m.b)
    x = torch.randn(2, 4, 5, 5, device=DEV)
    ep = torch.export.export(m, (x,))
    em = ep.module()
    em.load_state_dict(ref.state_dict(prefix="b."), strict=True)  # undo anything tracing touched
    out, out_ref = em(x), ref(x)
    assert_close(out, out_ref, rel=1e-4)
    ref_buffers = dict(ref.named_buffers(prefix="b"))
    for name, b in em.named_buffers():
        assert_close(b.float(), ref_buffers[name].float(), rtol=1e-5, atol=1e-6, what=name)


# ------------------------------------------------------------------------------------------------ low precision
LOWP = ([(k, cl, dt) for k, cl in [("cib", True), ("cib_lk", False), ("scdown", True), ("cls", False)]
         for dt in (torch.float16, torch.bfloat16)] if CUDA else
        [("cib_lk", False, torch.bfloat16), ("scdown", True, torch.float16)])


# a GPU always takes the staged depthwise path; the interpreter in the GPU-grid mode (2 programs) too
@pytest.mark.parametrize("gpu_grid", [None] if CUDA else [None, 2], indirect=True, ids=lambda p: f"grid{p or 0}")
@pytest.mark.parametrize("kind,cl,dtype", LOWP, ids=[f"{k}-{'cl' if cl else 'nchw'}-{str(d)[6:]}" for k, cl, d in LOWP])
def test_chain_low_precision(gpu_grid, kind, cl, dtype):
    """|fused - ref32| <= 2 |torch_lowp - ref32| + atol, for the output and every gradient (flash-attention's
    rule). On a GPU: fp16/bf16 on tensor cores at a moderate shape; under the interpreter: one tiny case each
    (bf16 dot operands are upcast there), which checks the low-precision storage paths and the test itself;
    in the GPU-grid mode the GPU's depthwise path, whose staged activations are stored in the low-precision dtype."""
    torch.manual_seed(10)
    c, shape = (24, (3, 24, 23, 19)) if CUDA else (6, (2, 6, 5, 7))
    ref32, layers, residual = make_block(kind, c, torch.float32)
    lowp_ref = copy.deepcopy(ref32).to(dtype)
    mine = copy.deepcopy(ref32).to(dtype)
    x = torch.randn(*shape, device=DEV)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        go = torch.randn_like(copy.deepcopy(ref32)(x))
    xs = [x.clone().requires_grad_(), x.to(dtype).requires_grad_(), x.to(dtype).requires_grad_()]
    outs = [ref32(xs[0]), lowp_ref(xs[1]), conv_chain_train(xs[2], layers(mine), residual)]
    assert outs[2].dtype == dtype
    for o in outs:
        (o.float() * go).sum().backward()
    atol = 1e-2 if dtype == torch.float16 else 5e-2

    def check(a, b, c, what):
        base = (b.float() - a.float()).abs().max().item()
        scale = max(1.0, a.float().abs().max().item())
        assert_close(c.float(), a.float(), atol=2 * base + atol * scale, what=f"{what} (PyTorch's error {base:.3g})")
    check(outs[0], outs[1], outs[2], "out")
    check(xs[0].grad, xs[1].grad, xs[2].grad, "x.grad")
    for (name, a), (_, b), (_, c) in zip(ref32.named_parameters(), lowp_ref.named_parameters(),
                                         mine.named_parameters()):
        assert c.grad.dtype == dtype, name
        check(a.grad, b.grad, c.grad, name)
