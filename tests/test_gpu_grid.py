"""The CPU tests' GPU-grid mode (yolov10_kernels.gpus.emulate; the `gpu_grid` fixture of conftest.py): the ops'
parity checks with the grids a GPU sizes for itself - several programs splitting the tiles (the last program given
tiles past the end where they do not divide evenly), per-program partial statistics and gradient sums merged
afterwards, the persistent inference grid, the depthwise convs' staged-tile path (which a GPU always takes) - at
1, 2 and 3 programs and an H100's 528 (one program per tile at these sizes). The interpreter's bounds checker
(conftest.py) watches every access. The parity checks are the op test files' own, on their shapes or a little
larger ones where the interpreter's big blocks would leave a single tile to split. Few cases: the staged path is
slow under the interpreter. PSA attention is not here: its grids (a program per token block and head) do not
depend on the program count, so tests/test_psa_attention.py already launches it as a GPU would; its batch
statistics are bn_batch_affine's (test_batch_statistics)."""
import pytest
import torch

pytest.importorskip("triton")

from yolov10_kernels.ops import bn_batch_affine, dw_pw_dw_infer, dw_pw_infer, dwconv, pwconv  # noqa: E402
from yolov10_kernels.ops.utils import triton_interpreted  # noqa: E402
import test_bn_batch_affine as BN  # noqa: E402
import test_chain_eval as EV  # noqa: E402
import test_chain_train as TR  # noqa: E402
import test_pwconv as PW  # noqa: E402

pytestmark = [pytest.mark.skipif(not triton_interpreted(), reason="the GPU-grid mode is the Triton interpreter's"),
              pytest.mark.usefixtures("exact_fp32")]


@pytest.fixture
def splits(monkeypatch):
    """(op file, tiles, programs, tiles per program) of every split_tiles call from now on."""
    seen = []
    for mod in (dwconv, pwconv, bn_batch_affine):
        def spy(num_tiles, other, device, _real=mod.split_tiles, _name=mod.__name__.rpartition(".")[2]):
            out = _real(num_tiles, other, device)
            seen.append((_name, num_tiles, *out))
            return out
        monkeypatch.setattr(mod, "split_tiles", spy)
    return seen


def assert_split(splits, profile, uneven):
    """The launches split their tiles as the emulated GPU does: one program each on a one-program grid, else
    several programs somewhere; `uneven`: some launch gave its last program tiles past the end."""
    assert splits
    if profile.programs == 1:
        assert all(p == 1 for _, _, p, _ in splits), splits
    else:
        assert any(p > 1 for _, _, p, _ in splits), splits
    assert any(p * per > tiles for _, tiles, p, per in splits) == uneven, splits


def _ids(cases):
    return ["-".join(map(str, (k, c, "x".join(map(str, s)), "cl" if cl else "nchw", f"p{p}")))
            for k, c, s, cl, p, _ in cases]


# kind, channels, x shape, channels_last, programs, whether some launch splits unevenly. 3 images make 3 output
# tiles (2 + 1 and a tile past the end at 2 programs); 19 x 21 makes 4 per image, cut by the border (7x7 taps);
# stride 2 on odd sizes; 1 program: the staged path alone (one program over every tile, its slot reused)
CHAINS = [
    ("cib", 6, (3, 6, 7, 9), False, 2, True),
    ("cib", 6, (3, 6, 7, 9), False, "H100", False),
    ("cib_lk", 3, (1, 3, 19, 21), True, 1, False),
    ("cib_lk", 3, (1, 3, 19, 21), True, 3, False),
    ("scdown", 3, (3, 3, 21, 18), True, 2, True),
    ("scdown", 3, (3, 3, 21, 18), True, 3, True),
    ("cls", 10, (3, 10, 7, 9), False, 1, False),
    ("cls", 10, (3, 10, 7, 9), False, 2, True),
]


@pytest.mark.parametrize("kind,c,shape,cl,gpu_grid,uneven", CHAINS, ids=_ids(CHAINS), indirect=["gpu_grid"])
def test_training_chain(kind, c, shape, cl, gpu_grid, uneven, splits):
    """A training chain (depthwise staged tiles, pointwise, BN statistics; forward and backward) against the
    reference: output, x.grad, every parameter's gradient, every buffer."""
    assert not dwconv._tapsvec(torch.empty(0))  # the GPU's staged path, not the interpreter's vectorised taps
    TR.check_chain(kind, c, shape, cl)
    assert_split(splits, gpu_grid, uneven)


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("gpu_grid", [2], indirect=True)
def test_training_chain_on_a_channel_slice(cl, gpu_grid, splits):
    """C2fCIB's second chunk of 3 images: the tile past the end would be read past the slice's parent."""
    TR.check_channel_slice(cl, batch=3)
    assert_split(splits, gpu_grid, True)


@pytest.mark.parametrize("gpu_grid,cl", [(1, False), (2, False), (3, True), ("H100", True)], indirect=["gpu_grid"])
def test_pointwise_backward(monkeypatch, gpu_grid, cl, splits):
    """Both backward paths (fused: a persistent grid of row tiles; split: dgrad, then wgrad over row splits) with
    every flag on, 1725 rows in 7 tiles (4 + 3 at 2 programs, 3 + 3 + 1 at 3), against the float64 reference."""
    args, ref = PW.make_case(3, 6, 23, 25, 10, True, True, True, True, channels_last=cl, seed=4)
    PW.check(PW.run_backward(monkeypatch, args, "fused"), ref, args, PW.REL, "fused: ")
    PW.check(PW.run_backward(monkeypatch, args, "split"), ref, args, PW.REL, "split: ")
    assert_split(splits, gpu_grid, gpu_grid.programs in (2, 3))


@pytest.mark.parametrize("momentum,cl,gpu_grid", [(0.1, False, 2), (None, True, 3), (0.1, True, "H100")],
                         indirect=["gpu_grid"])
def test_batch_statistics(momentum, cl, gpu_grid, splits):
    """A BN's statistics of a tensor (scale_shift, as PSA takes them) and their backward: 8979 positions in 5
    tiles (3 + 2 at 2 programs, 2 + 2 + 1 at 3), per-program partials merged."""
    BN.check_scale_shift(momentum, cl, (3, 5, 41, 73))
    assert_split(splits, gpu_grid, gpu_grid.programs in (2, 3))


@pytest.mark.parametrize("lk,b,h,w,cl", [(False, 1, 9, 13, False), (True, 3, 5, 7, True)], ids=["dw3-b1", "lk-b3-cl"])
@pytest.mark.parametrize("gpu_grid", [1, 3, "H100"], indirect=True)
def test_inference_cib(monkeypatch, lk, b, h, w, cl, gpu_grid):
    """The eval CIB (dw_pw, then dw_pw_dw on a persistent grid of the device's program count, each program's
    scratch slot reused across its tiles) against the reference."""
    grids = []
    launch = dw_pw_dw_infer.launch_tuned

    def spy(tuned, grid, interp_meta, args, kwargs):
        grids.append((tuned.fn.__name__, grid({**kwargs, **interp_meta})[0]))
        return launch(tuned, grid, interp_meta, args, kwargs)
    for mod in (dw_pw_infer, dw_pw_dw_infer):
        monkeypatch.setattr(mod, "launch_tuned", spy)
    x = torch.randn(b, 20, h, w)
    EV.check(EV.make_cib(20, lk), x.to(memory_format=torch.channels_last) if cl else x)
    persistent = [n for name, n in grids if name == "_dw_pw_dw_kernel"]
    assert persistent and all(1 <= n <= gpu_grid.programs for n in persistent), grids
    assert (max(persistent) > 1) == (gpu_grid.programs > 1), grids
