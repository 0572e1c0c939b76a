"""FusedTaskAlignedAssigner: a drop-in for yolov10.assign.TaskAlignedAssigner backed by the fused,
memory-bounded C++ (CPU) / CUDA op torch.ops.yolov10_kernels.task_aligned_assign.

The reference materialises (B, M, A) and (B, M, A, 4) tensors (M = most boxes in any image of the batch,
A = 8400 anchors at 640 px); the fused op visits, per (image, gt), only the anchors inside the gt and keeps
a top-k, so its extra memory is O(B*A + B*M*topk). Results are those of the reference: on float32 inputs
fg_mask, target_gt_idx, target_labels and target_bboxes are identical and target_scores agree to float
rounding; fp16/bf16 scores and boxes are upcast and the align metric is computed in float32.
"""
import torch
from torch import nn

from .backend import kernels_disabled
from .ops import assign_ext

BACKENDS = ("auto", "fused", "cpp", "cuda", "reference", "triton")
_fake_registered = False


def _register_fake():
    """Shapes/dtypes of the op for FakeTensor / torch.compile / opcheck (after the library is loaded)."""
    global _fake_registered
    if _fake_registered:
        return

    @torch.library.register_fake(assign_ext.ASSIGN_OP)
    def _(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk, num_classes, alpha, beta, eps):
        torch._check(pd_scores.dim() == 3 and gt_bboxes.dim() == 3)
        b, a = pd_scores.shape[0], pd_scores.shape[1]
        return (pd_scores.new_empty((b, a), dtype=torch.int64),
                pd_scores.new_empty((b, a, 4), dtype=torch.float32),
                pd_scores.new_empty((b, a, num_classes), dtype=torch.float32),
                pd_scores.new_empty((b, a), dtype=torch.bool),
                pd_scores.new_empty((b, a), dtype=torch.int64))

    _fake_registered = True


def load_op():
    """Load (or JIT-build) the extension; returns (ok, how_or_why) and registers the fake kernel."""
    ok, how = assign_ext.load()
    if ok:
        _register_fake()
    return ok, how


def task_aligned_assign(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk, num_classes,
                        alpha=0.5, beta=6.0, eps=1e-9):
    """The raw op with the reference's input conventions (gt_labels / mask_gt may be (B, M, 1), any dtype).
    Returns float32 target_bboxes/target_scores; needs M > 0 (see FusedTaskAlignedAssigner for M == 0)."""
    b, m = gt_bboxes.shape[0], gt_bboxes.shape[1]
    labels = gt_labels.reshape(b, m).long()  # float labels truncate, as gt_labels.long() in the reference
    valid = mask_gt.reshape(b, m).bool()
    return torch.ops.yolov10_kernels.task_aligned_assign(
        pd_scores, pd_bboxes, anc_points, labels, gt_bboxes, valid, int(topk), int(num_classes),
        float(alpha), float(beta), float(eps))


class FusedTaskAlignedAssigner(nn.Module):
    """Task-aligned assigner (YOLOv8/v10 TAL), called and returning exactly as
    yolov10.assign.TaskAlignedAssigner:

        target_labels, target_bboxes, target_scores, fg_mask, target_gt_idx = assigner(
            pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt)

    pd_scores (B, A, nc) sigmoid scores, pd_bboxes (B, A, 4) xyxy pixels, anc_points (A, 2) pixels,
    gt_labels (B, M, 1), gt_bboxes (B, M, 4) xyxy pixels, mask_gt (B, M, 1) (1 = real box, 0 = padding).

    backend: "auto" (C++ op on CPU tensors, CUDA op on CUDA tensors, the reference where the extension is
    unavailable, with one warning), "fused" (the op for the tensors' device, error if unavailable; "triton",
    the package-wide "custom kernels required" switch, means the same: there is no Triton assignment
    kernel), "cpp" / "cuda" (that op only) or "reference". YOLOV10_KERNELS=off makes every backend use the
    reference.
    """

    def __init__(self, topk=13, num_classes=80, alpha=1.0, beta=6.0, eps=1e-9, backend="auto"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.topk = topk
        self.num_classes = num_classes
        self.alpha = alpha
        self.beta = beta
        self.eps = eps
        self.bg_idx = num_classes
        self.backend = backend
        self._ref = None

    def extra_repr(self):
        return (f"topk={self.topk}, num_classes={self.num_classes}, alpha={self.alpha}, beta={self.beta}, "
                f"eps={self.eps}, backend={self.backend!r}")

    def reference(self):
        if self._ref is None:
            from yolov10.assign import TaskAlignedAssigner
            self._ref = TaskAlignedAssigner(topk=self.topk, num_classes=self.num_classes, alpha=self.alpha,
                                            beta=self.beta, eps=self.eps)
        return self._ref

    def _use_op(self, device):
        """True to run the fused op for tensors on `device`, False for the reference."""
        if self.backend == "reference" or kernels_disabled():  # YOLOV10_KERNELS=off wins, as for every op
            return False
        ok, why = load_op()
        key = "CUDA" if device.type == "cuda" else ("CPU" if device.type == "cpu" else None)
        has_kernel = ok and key is not None and assign_ext.op_registered(assign_ext.ASSIGN_OP, key)
        if self.backend == "auto":
            if not has_kernel:
                assign_ext.warn_fallback(why if not ok else f"no {device.type} kernel built")
            return has_kernel
        want = {"cuda": "cuda", "cpp": "cpu"}.get(self.backend, device.type)
        if device.type != want:
            raise RuntimeError(f"backend={self.backend!r} needs {want} tensors, got {device.type}")
        if not has_kernel:
            raise RuntimeError(f"backend={self.backend!r} requested but the fused op is unavailable: "
                               f"{why if not ok else f'no {device.type} kernel was built'}")
        return True

    @torch.no_grad()
    def forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt):
        self.bs = pd_scores.shape[0]
        self.n_max_boxes = gt_bboxes.shape[1]
        if self.n_max_boxes == 0:  # exactly the reference's outputs (float labels/mask/idx included)
            return (torch.full_like(pd_scores[..., 0], self.bg_idx),
                    torch.zeros_like(pd_bboxes),
                    torch.zeros_like(pd_scores),
                    torch.zeros_like(pd_scores[..., 0]),
                    torch.zeros_like(pd_scores[..., 0]))
        if not self._use_op(pd_scores.device):
            return self.reference()(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt)
        labels, bboxes, scores, fg, idx = task_aligned_assign(
            pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, self.topk, self.num_classes,
            self.alpha, self.beta, self.eps)
        # the reference's output dtypes: boxes follow gt_bboxes, scores follow the metric's dtype
        score_dtype = torch.promote_types(pd_scores.dtype, pd_bboxes.dtype)
        if bboxes.dtype != gt_bboxes.dtype:
            bboxes = bboxes.to(gt_bboxes.dtype)
        if scores.dtype != score_dtype:
            scores = scores.to(score_dtype)
        return labels, bboxes, scores, fg, idx
