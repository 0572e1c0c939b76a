"""FusedTaskAlignedAssigner: yolov10.assign.TaskAlignedAssigner on the fused, memory-bounded C++ (CPU) / CUDA
op (yolov10_kernels.ops.assign).

The reference materialises (B, M, A) and (B, M, A, 4) tensors (M = most boxes in any image of the batch,
A = 8400 anchors at 640 px); the fused op visits, per (image, gt), only the anchors inside the gt and keeps
a top-k, so its extra memory is O(B*A + B*M*topk). Results are those of the reference: on float32 inputs
fg_mask, target_gt_idx, target_labels and target_bboxes are identical and target_scores agree to float
rounding; fp16/bf16 scores and boxes are upcast and the align metric is computed in float32.
"""
import torch

from yolov10.assign import TaskAlignedAssigner

from ..ops import assign
from ..ops.utils import kernels_disabled, warn_once

BACKENDS = ("auto", "fused", "cpp", "cuda", "reference", "triton")


class FusedTaskAlignedAssigner(TaskAlignedAssigner):
    """The reference assigner (same constructor, call and outputs; M == 0 is the reference's own path) whose
    assignment runs the fused op.

    backend: "auto" (C++ op on CPU tensors, CUDA op on CUDA tensors, the reference where the extension is
    unavailable, with one warning), "fused" (the op for the tensors' device, error if unavailable; "triton",
    the package-wide "custom kernels required" switch, means the same: there is no Triton assignment
    kernel), "cpp" / "cuda" (that op only) or "reference". YOLOV10_KERNELS=off makes every backend use the
    reference.
    """

    def __init__(self, topk=13, num_classes=80, alpha=1.0, beta=6.0, eps=1e-9, backend="auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if num_classes < 1 or topk < 1:
            raise ValueError(f"num_classes and topk must be >= 1, got num_classes={num_classes}, topk={topk}")
        super().__init__(topk=topk, num_classes=num_classes, alpha=alpha, beta=beta, eps=eps)
        self.backend = backend

    def extra_repr(self):
        return f"{super().extra_repr()}, eps={self.eps}, backend={self.backend!r}"

    def _use_op(self, pd_scores):
        """True to run the fused op for pd_scores (its device and shape), False for the reference."""
        if self.backend == "reference" or kernels_disabled():  # YOLOV10_KERNELS=off wins, as for every op
            return False
        device, unsupported = pd_scores.device, assign.unsupported(pd_scores, self.topk, self.num_classes)
        if unsupported and self.backend == "auto":
            warn_once(("assign", "unsupported"), f"yolov10_kernels: the fused assignment op cannot run here "
                                                 f"({unsupported}); using the reference TaskAlignedAssigner")
            return False
        if unsupported:
            raise ValueError(f"backend={self.backend!r}: {unsupported}")
        ok, why = assign.load()
        has_kernel = ok and assign.has_kernel(device.type)
        if self.backend == "auto":
            if not has_kernel:
                assign.warn_fallback(why if not ok else f"no {device.type} kernel built")
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
        if gt_bboxes.shape[1] == 0 or not self._use_op(pd_scores):
            return super().forward(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt)
        labels, bboxes, scores, fg, idx = assign.task_aligned_assign(
            pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, self.topk, self.num_classes,
            self.alpha, self.beta, self.eps)
        # the reference's output dtypes: boxes follow gt_bboxes, scores follow the metric's dtype
        score_dtype = torch.promote_types(pd_scores.dtype, pd_bboxes.dtype)
        return labels, bboxes.to(gt_bboxes.dtype), scores.to(score_dtype), fg, idx
