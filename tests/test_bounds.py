"""The interpreter's bounds checker (yolov10_kernels.testing.bounds, on for the whole suite from conftest.py): a
kernel whose mask lets loads or stores past its tensors fails, naming the kernel and the byte offset; correct
masks, masked-out stray addresses and reads inside a slice's parent pass."""
import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from yolov10_kernels.ops.utils import triton_interpreted  # noqa: E402
from yolov10_kernels.testing import bounds  # noqa: E402

pytestmark = pytest.mark.skipif(not triton_interpreted(), reason="checks the Triton interpreter (TRITON_INTERPRET=1)")


@triton.jit
def _copy_kernel(src, dst, n, limit, BLOCK: tl.constexpr):
    """dst[i] = src[i] for i < limit: limit > n is the deliberately broken mask (the right one is i < n)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + i, tl.load(src + i, mask=i < limit, other=0.0), mask=i < n)


@triton.jit
def _fill_kernel(dst, limit, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(dst + i, tl.full([BLOCK], 1.0, tl.float32), mask=i < limit)


def test_correct_mask_passes():
    src = torch.arange(10, dtype=torch.float32)
    dst = torch.empty(10)
    _copy_kernel[(2,)](src, dst, 10, 10, BLOCK=8)  # 16 lanes, 6 masked out: their addresses are never checked
    assert torch.equal(dst, src)
    assert bounds.take() == []


def test_broken_load_mask_fails_naming_kernel_and_offset():
    src, dst = torch.arange(10, dtype=torch.float32), torch.empty(10)
    with pytest.raises(bounds.OutOfBounds, match=r"kernel _copy_kernel, program \(1, 0, 0\): masked-in load of 4 "
                                                 r"bytes at byte offset 40 of argument src .*storage of 40 bytes: 0 "
                                                 r"bytes past its end.*2 of 4 masked-in"):
        _copy_kernel[(2,)](src, dst, 10, 12, BLOCK=8)
    assert len(bounds.take()) == 1


def test_broken_store_mask_fails():
    dst = torch.zeros(2, 8)[:, :5]  # rows of 5 of a (2, 8) storage: 8 stores stay inside the parent
    _fill_kernel[(1,)](dst, 8, BLOCK=16)
    with pytest.raises(bounds.OutOfBounds, match=r"_fill_kernel.*store of 4 bytes at byte offset 64 of argument dst "
                                                 r"\(storage of 64 bytes"):
        _fill_kernel[(1,)](dst, 17, BLOCK=32)
    bounds.take()


def test_a_view_may_read_its_parent_but_not_past_it():
    """A channel slice (C2fCIB's chunk) is read in place: its storage is the parent's, the bound is the parent's."""
    parent = torch.arange(16, dtype=torch.float32)
    src, dst = parent[8:], torch.empty(8)
    _copy_kernel[(1,)](parent[4:8], dst, 8, 8, BLOCK=8)  # reads parent[4:12]: inside the parent
    assert torch.equal(dst, parent[4:12])
    with pytest.raises(bounds.OutOfBounds, match="byte offset 64 of argument src"):
        _copy_kernel[(1,)](src, dst, 8, 9, BLOCK=16)
    bounds.take()


def test_unchecked_interpreter_lets_the_broken_mask_through():
    """What the checker is for: the interpreter itself reads past the tensor without complaint."""
    src, dst = torch.arange(10, dtype=torch.float32), torch.empty(10)
    with bounds.disabled():
        _copy_kernel[(2,)](src, dst, 10, 12, BLOCK=8)
    assert torch.equal(dst, src)
    assert bounds.take() == []
