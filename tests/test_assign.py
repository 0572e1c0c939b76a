"""The reference task-aligned assigner must be bit-exact with ultralytics 8.3.253's on fp32 inputs."""
import pytest
import torch

from yolov10.assign import (TaskAlignedAssigner, get_box_metrics, get_targets, select_candidates_in_gts,
                            select_highest_overlaps, select_topk_candidates)
from yolov10.boxes import xywh2xyxy
from yolov10.head import make_anchors

from helpers import assert_same_assignment
from oracle import Lazy

tal = Lazy("ultralytics.utils.tal")  # the parity oracle, imported on first use (tests/oracle.py)

NC = 5
ALPHA, BETA = 0.5, 6.0


def anchors_for(h, w, strides=(8, 16, 32)):
    """Anchor centres in pixels for an h x w input (sizes that are not multiples of 32 give odd grids)."""
    feats = [torch.empty(1, 1, -(-h // s), -(-w // s)) for s in strides]
    anc, stride = make_anchors(feats, torch.tensor(strides, dtype=torch.float32))
    return anc * stride


def predictions(g, b, anc, nc=NC, spread=40.0):
    """Random sigmoid scores and xyxy predicted boxes around each anchor, in pixels."""
    a = anc.shape[0]
    scores = torch.rand(b, a, nc, generator=g)
    lt = torch.rand(b, a, 2, generator=g) * spread
    rb = torch.rand(b, a, 2, generator=g) * spread
    return scores, torch.cat((anc - lt, anc + rb), -1)


def random_gts(g, counts, img_hw, nc=NC, max_wh=0.6):
    """Per-image counts -> zero-padded (B, M, 1) labels, (B, M, 4) xyxy pixels, (B, M, 1) float mask (as the
    loss builds them: padding rows are all zeros)."""
    h, w = img_hw
    b, m = len(counts), max(counts)
    labels = torch.zeros(b, m, 1)
    boxes = torch.zeros(b, m, 4)
    for i, n in enumerate(counts):
        xy = torch.rand(n, 2, generator=g)
        wh = torch.rand(n, 2, generator=g) * max_wh + 0.01
        boxes[i, :n] = xywh2xyxy(torch.cat((xy, wh), 1)) * torch.tensor([w, h, w, h])
        labels[i, :n, 0] = torch.randint(0, nc, (n,), generator=g).float()
    mask = boxes.sum(2, keepdim=True).gt_(0.0)
    return labels, boxes, mask


def run_both(topk, *inputs, nc=NC):
    ours = TaskAlignedAssigner(topk=topk, num_classes=nc, alpha=ALPHA, beta=BETA)(*inputs)
    ref = tal.TaskAlignedAssigner(topk=topk, num_classes=nc, alpha=ALPHA, beta=BETA)(*inputs)
    assert_same_assignment(ours, ref)
    return ours


def test_constructor_defaults_match_ultralytics():
    a, r = TaskAlignedAssigner(), tal.TaskAlignedAssigner()
    for k in ("topk", "num_classes", "alpha", "beta", "eps"):
        assert getattr(a, k) == getattr(r, k)


@pytest.mark.parametrize("topk", [1, 10, 13])
@pytest.mark.parametrize("batch", [1, 3])
def test_random(topk, batch):
    g = torch.Generator().manual_seed(100 * topk + batch)
    img = (72, 56)  # odd grids 9x7, 5x4, 3x2: A = 63 + 20 + 6 = 89
    anc = anchors_for(*img)
    assert anc.shape[0] == 89
    for trial in range(4):
        counts = torch.randint(0, 9, (batch,), generator=g).tolist()
        counts[0] = max(counts[0], 1)
        scores, pboxes = predictions(g, batch, anc)
        labels, boxes, mask = random_gts(g, counts, img)
        fg = run_both(topk, scores, pboxes, anc, labels, boxes, mask)[3]
    assert fg.dtype == torch.bool


@pytest.mark.parametrize("topk", [1, 10, 13])
def test_odd_anchor_count_and_arbitrary_anchors(topk):
    g = torch.Generator().manual_seed(7)
    anc = torch.rand(127, 2, generator=g) * 100  # odd A, unordered anchors
    scores, pboxes = predictions(g, 3, anc, spread=25.0)
    labels, boxes, mask = random_gts(g, [4, 11, 1], (100, 100))
    run_both(topk, scores, pboxes, anc, labels, boxes, mask)


@pytest.mark.parametrize("topk", [1, 10])
def test_empty_batch_m0(topk):
    anc = anchors_for(64, 96)
    g = torch.Generator().manual_seed(1)
    scores, pboxes = predictions(g, 2, anc)
    labels, boxes, mask = torch.zeros(2, 0, 1), torch.zeros(2, 0, 4), torch.zeros(2, 0, 1)
    out = run_both(topk, scores, pboxes, anc, labels, boxes, mask)
    assert (out[0] == NC).all() and not out[3].any() and not out[2].any()


@pytest.mark.parametrize("topk", [1, 10, 13])
def test_empty_image_next_to_200_boxes(topk):
    g = torch.Generator().manual_seed(2)
    img = (64, 96)
    anc = anchors_for(*img)
    scores, pboxes = predictions(g, 3, anc)
    labels, boxes, mask = random_gts(g, [0, 200, 3], img, max_wh=0.3)
    out = run_both(topk, scores, pboxes, anc, labels, boxes, mask)
    assert not out[3][0].any() and out[3][1].any()


@pytest.mark.parametrize("topk", [1, 10, 13])
def test_padding_rows_with_garbage_are_ignored(topk):
    """mask_gt False rows are ignored whatever their boxes and labels (float and bool masks)."""
    g = torch.Generator().manual_seed(3)
    img = (64, 96)
    anc = anchors_for(*img)
    scores, pboxes = predictions(g, 2, anc)
    labels, boxes, _ = random_gts(g, [6, 6], img)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.float32)[..., None]
    run_both(topk, scores, pboxes, anc, labels, boxes, mask)
    run_both(topk, scores, pboxes, anc, labels, boxes, mask.bool())
    run_both(topk, scores, pboxes, anc, labels.long(), boxes, mask)


def _adversarial_gts(img):
    h, w = img
    rows = [
        [0.0, 0.0, w, h],  # whole image, touching all borders
        [0.0, 0.0, 8.0, 8.0],  # one cell in the corner: its anchor (4, 4) is inside
        [w - 16.0, h - 16.0, w, h],  # bottom-right corner
        [4.0, 4.0, 20.0, 20.0],  # edges exactly on anchor centres (strict inside test)
        [9.0, 9.0, 9.5, 9.5],  # tiny, contains no anchor
        [11.9, 11.9, 12.1, 12.1],  # tiny around anchor (12, 12)
        [20.0, 20.0, 20.0, 44.0],  # zero width through anchors
        [28.0, 28.0, 28.0, 28.0],  # a point on an anchor
        [30.0, 10.0, 70.0, 50.0],  # duplicates of one box ...
        [30.0, 10.0, 70.0, 50.0],
        [30.0, 10.0, 70.0, 50.0],
        [30.5, 10.5, 70.0, 50.0],  # ... and a near-duplicate
        [40.0, 0.0, 56.0, h],  # full-height strip touching top and bottom
    ]
    return torch.tensor(rows)


@pytest.mark.parametrize("topk", [1, 10, 13])
def test_adversarial_boxes(topk):
    g = torch.Generator().manual_seed(4)
    img = (64, 96)
    anc = anchors_for(*img)
    gt = _adversarial_gts(img)
    m = gt.shape[0]
    boxes = torch.stack((gt, gt.flip(0), torch.zeros_like(gt)))
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 3, 4, 3, 0], dtype=torch.float32)
    labels = torch.stack((labels, labels.flip(0), labels))[..., None]
    mask = torch.ones(3, m, 1)
    mask[2] = 0  # third image has no gts
    scores, pboxes = predictions(g, 3, anc)
    run_both(topk, scores, pboxes, anc, labels, boxes, mask)
    mask_pos = TaskAlignedAssigner(topk, NC, ALPHA, BETA).get_pos_mask(scores, pboxes, labels, boxes, anc, mask)[0]
    assert mask_pos.sum(-2).max() > 1  # anchors claimed by several gts: the overlap tie-break path runs
    # predictions equal to the gts (perfect overlaps, CIoU == 1 ties) and tied scores
    pboxes2 = boxes[:, torch.arange(anc.shape[0]) % m]
    scores2 = torch.full_like(scores, 0.5)
    run_both(topk, scores2, pboxes2, anc, labels, boxes, mask)
    # all predictions identical: every candidate has the same metric (topk ties everywhere)
    pboxes3 = torch.tensor([10.0, 10.0, 60.0, 50.0]).expand_as(pboxes).contiguous()
    run_both(topk, scores2, pboxes3, anc, labels, boxes, mask)
    # zero scores for the gt class: align metric 0 everywhere
    run_both(topk, torch.zeros_like(scores), pboxes, anc, labels, boxes, mask)


def test_topk_equal_to_anchor_count():
    g = torch.Generator().manual_seed(5)
    anc = torch.rand(13, 2, generator=g) * 32
    scores, pboxes = predictions(g, 2, anc, spread=10.0)
    labels, boxes, mask = random_gts(g, [3, 2], (32, 32))
    run_both(13, scores, pboxes, anc, labels, boxes, mask)
    with pytest.raises(ValueError, match="topk"):
        TaskAlignedAssigner(topk=14, num_classes=NC)(scores, pboxes, anc, labels, boxes, mask)


def test_helpers_match_ultralytics_staticmethods():
    g = torch.Generator().manual_seed(6)
    img = (64, 96)
    anc = anchors_for(*img)
    labels, boxes, mask = random_gts(g, [5, 12], img)
    boxes[0, 0] = torch.tensor([0.0, 0.0, 96.0, 64.0])
    R = tal.TaskAlignedAssigner
    assert torch.equal(select_candidates_in_gts(anc, boxes), R.select_candidates_in_gts(anc, boxes))
    assert TaskAlignedAssigner.select_candidates_in_gts is select_candidates_in_gts
    mask_pos = (torch.rand(2, 12, anc.shape[0], generator=g) > 0.7).float()
    overlaps = torch.rand(2, 12, anc.shape[0], generator=g)
    for x, y in zip(select_highest_overlaps(mask_pos, overlaps, 12), R.select_highest_overlaps(mask_pos, overlaps, 12)):
        assert x.dtype == y.dtype and torch.equal(x, y)
    # the instance methods of the reference on the same pieces
    scores, pboxes = predictions(g, 2, anc)
    ref = R(topk=10, num_classes=NC, alpha=ALPHA, beta=BETA)
    ref.bs, ref.n_max_boxes = 2, 12
    cand = select_candidates_in_gts(anc, boxes) * mask
    ours_m = get_box_metrics(scores, pboxes, labels, boxes, cand, ALPHA, BETA)
    ref_m = ref.get_box_metrics(scores, pboxes, labels, boxes, cand)
    assert all(torch.equal(x, y) for x, y in zip(ours_m, ref_m))
    topk_mask = mask.expand(-1, -1, 10).bool()
    ours_topk = select_topk_candidates(ours_m[0], 10, topk_mask)
    assert torch.equal(ours_topk, ref.select_topk_candidates(ref_m[0], topk_mask))
    idx, fg, _ = select_highest_overlaps(mask_pos, overlaps, 12)
    for x, y in zip(get_targets(labels, boxes, idx, fg, NC), ref.get_targets(labels, boxes, idx, fg)):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_no_grad_and_shapes():
    g = torch.Generator().manual_seed(8)
    img = (64, 96)
    anc = anchors_for(*img)
    scores, pboxes = predictions(g, 2, anc)
    scores.requires_grad_(True)
    labels, boxes, mask = random_gts(g, [2, 3], img)
    labels_t, boxes_t, scores_t, fg, idx = TaskAlignedAssigner(10, NC, ALPHA, BETA)(scores, pboxes, anc, labels,
                                                                                     boxes, mask)
    a = anc.shape[0]
    assert labels_t.shape == (2, a) and labels_t.dtype == torch.int64
    assert boxes_t.shape == (2, a, 4) and scores_t.shape == (2, a, NC) and not scores_t.requires_grad
    assert fg.shape == (2, a) and idx.shape == (2, a) and idx.dtype == torch.int64
    # soft targets live only on foreground anchors and never exceed 1
    assert (scores_t[~fg] == 0).all() and scores_t.max() <= 1
