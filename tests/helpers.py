"""Test helpers shared by several test files."""
import torch


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


def max_rel_err(got, want):
    """max |got - want| / max |want| (in float64), the closeness measure of the kernel tests."""
    got, want = got.double(), want.double()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def assert_close(got, want, rel=1e-4, what="output"):
    """got equals want up to rel * max|want| everywhere (same shape and dtype, every element finite, so an
    element a kernel never wrote, NaN under the poison switch, fails)."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} vs {want.dtype}"
    assert torch.isfinite(got).all(), f"{what}: non-finite values (an unwritten element?)"
    err = max_rel_err(got, want)
    assert err <= rel, f"{what}: relative error {err:.3g} > {rel}"
