"""Test helpers shared by several test files."""
import torch

# TF32 keeps 10 of fp32's 23 mantissa bits: a TF32 dot rounds its inputs with unit roundoff 2 ** -11
TF32_EPS = 2.0 ** -11


def randomize_bn(module, seed=0):
    """Non-trivial BN affine parameters, running statistics and batch counters (a fresh BN is the identity in
    eval mode), with the BN hyper-parameters the YOLOv10 model sets."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.eps, m.momentum = 1e-3, 0.03
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.num_batches_tracked.fill_(3)
    return module


def assert_same_detections(out, ref, atol=1e-4):
    """(B, K, 6) detections equal up to the order of entries whose scores tie within atol: the scores match
    in order, and every detection of `out` has an equal row (box, score, class) in `ref`."""
    assert out.shape == ref.shape
    assert (out[..., 4] - ref[..., 4]).abs().max() <= atol
    for o, r in zip(out, ref):
        scale = r[:, :4].abs().max().clamp_min(1.0)
        diff = (o[:, None, :] - r[None, :, :]).abs()
        diff[..., :4] /= scale  # boxes compared relative to the image scale, score/class absolutely
        assert diff.amax(-1).amin(1).max() <= atol


def _max_rel_err(got, want):
    """max |got - want| / max |want| (in float64)."""
    got, want = got.double(), want.double()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def assert_close(got, want, rel=0.0, rtol=0.0, atol=0.0, what="output"):
    """The tests' one closeness check: every element within

        |got - want| <= rel * max|want| + rtol * |want| + atol      (in float64),

    all three 0 (the default) meaning exactly equal (torch.equal, for integer and bool outputs too). `rel` is the
    kernel tests' measure, relative to the largest |want| (near-zero elements are not held to a relative bound);
    `rtol`/`atol` are torch.allclose's. got and want also have the same shape, dtype and device, and every element
    of got is finite (an element a kernel never wrote is NaN under the poison switch)."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} vs {want.dtype}"
    assert got.device == want.device, f"{what}: device {got.device} vs {want.device}"
    if got.is_floating_point():
        assert torch.isfinite(got).all(), f"{what}: non-finite values (an unwritten element?)"
    if rel == rtol == atol == 0:
        assert torch.equal(got, want), f"{what}: not equal ({int((got != want).sum())} of {got.numel()} elements differ)"
        return
    if got.numel() == 0:
        return
    g, w = got.double(), want.double()
    bad = (g - w).abs() > rel * w.abs().max() + rtol * w.abs() + atol
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {got.numel()} elements off by more than rel={rel} * max|want| "
                           f"+ rtol={rtol} * |want| + atol={atol} (max |got - want| "
                           f"{(g - w).abs().max().item():.3g}, relative to max|want| {_max_rel_err(got, want):.3g})")


ASSIGNMENT_FIELDS = ("target_labels", "target_bboxes", "target_scores", "fg_mask", "target_gt_idx")


def assert_same_assignment(got, want):
    """A task-aligned assigner's five outputs bit-identical (assert_close with no tolerance, field by field)."""
    assert len(got) == len(want) == len(ASSIGNMENT_FIELDS)
    for name, g, w in zip(ASSIGNMENT_FIELDS, got, want):
        assert_close(g, w, what=name)
