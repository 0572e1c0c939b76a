"""ops/utils.finish_stats and sum_partials: the on-device merges of per-program partials (Welford statistics with
the parallel-variance formula, partial sums) as trees of at most MERGE_ROWS rows per program: values against
torch, every tree depth (one level, two, and deeper with a small MERGE_ROWS), programs that saw no rows, the
transposed depthwise-weight store, and bit-identical results run to run."""
import pytest
import torch

from yolov10_kernels.ops import utils
from helpers import assert_close


def partials(P, C, seed):
    """Per-program (count, mean, M2) of random row sets (some empty) and all the rows together, fp64."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 6, (P,), generator=g)
    counts[0] = 2
    rows = [torch.randn(int(n), C, generator=g, dtype=torch.float64) * 3 + 1 for n in counts]
    zero = torch.zeros(C, dtype=torch.float64)
    mean = torch.stack([r.mean(0) if len(r) else zero for r in rows])
    m2 = torch.stack([((r - r.mean(0)) ** 2).sum(0) if len(r) else zero for r in rows])
    return counts.double(), mean, m2, torch.cat(rows)


@pytest.mark.parametrize("P,merge_rows", [(1, 256), (2, 256), (7, 256), (300, 256), (300, 4), (70, 2)])
def test_finish_stats_and_sum_partials_match_torch_at_every_tree_depth(P, merge_rows, monkeypatch):
    monkeypatch.setattr(utils, "MERGE_ROWS", merge_rows)  # 300 rows at 4 per program: four levels
    cnt, mean, m2, rows = partials(P, 5, seed=P)
    got = utils.finish_stats(cnt, mean, m2, rows)
    assert_close(got[0], rows.mean(0), rel=1e-12, what="mean")
    assert_close(got[1], rows.var(0, correction=0), rel=1e-12, what="var")
    again = utils.finish_stats(cnt, mean, m2, rows)
    assert torch.equal(got[0], again[0]) and torch.equal(got[1], again[1])  # a fixed merge order

    parts = torch.randn(P, 9, 4, generator=torch.Generator().manual_seed(P))
    w = utils.sum_partials(parts, torch.empty(4, 1, 3, 3), taps=9)  # (P, taps, C) -> a (C, 1, 3, 3) weight
    assert_close(w, parts.sum(0).t().reshape(4, 1, 3, 3), rel=1e-6, what="weight")
    flat = utils.sum_partials(parts.reshape(P, -1), torch.empty(36, dtype=torch.float64))
    assert_close(flat, parts.reshape(P, -1).sum(0).double(), rel=1e-6, what="sum")
    assert torch.equal(flat, utils.sum_partials(parts.reshape(P, -1), torch.empty(36, dtype=torch.float64)))


def test_merge_rows_bounds_each_programs_walk():
    """About sqrt(P) rows per program (both levels walk about as many), never more than MERGE_ROWS: the 3,200
    partial rows of a pointwise layer at 80x80, batch 64 take two levels of 57 rows."""
    assert [utils.merge_rows(p) for p in (0, 1, 2, 3200)] == [1, 1, 2, 57]
    assert utils.merge_rows(10 ** 6) == utils.MERGE_ROWS
