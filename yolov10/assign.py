"""Task-aligned assigner (TOOD / YOLOv8 / YOLOv10), pure PyTorch.

Reference implementation, bit-exact with ``ultralytics.utils.tal.TaskAlignedAssigner`` of ultralytics
8.3.253 (the THU-MIG YOLOv10 algorithm; 8.4 changed it). It is the oracle of the fused C++/CUDA assigner
(see ``yolov10.kernel_seam.assigner_factory``), which mirrors the call signature below.

Shapes: B images, M = gt slots per image (padded to the most boxes in any image), A anchors, C classes.

Algorithm:
 1. candidates: anchor centres strictly inside a (valid) gt box (every ltrb delta > 1e-9);
 2. metrics on candidate pairs only: score = predicted probability of the gt class, overlap = CIoU(gt, pred)
    clamped at 0, align = score**alpha * overlap**beta (0 elsewhere);
 3. per gt, its top-k anchors by align (ties broken by ``torch.topk``), kept only if they are candidates;
 4. an anchor claimed by several gts keeps the one with the highest overlap (first on ties);
 5. targets: the gt's label and box; soft class target = one-hot * align / (best align of that gt) * (best
    overlap of that gt), maxed over gts.
"""
import torch
import torch.nn as nn

from .boxes import bbox_iou

__all__ = [
    "TaskAlignedAssigner",
    "select_candidates_in_gts",
    "get_box_metrics",
    "select_topk_candidates",
    "select_highest_overlaps",
    "get_targets",
]


def select_candidates_in_gts(xy_centers, gt_bboxes, eps=1e-9):
    """(A, 2) anchor centres, (B, M, 4) xyxy gt boxes -> (B, M, A) bool: centre strictly inside the box."""
    n_anchors = xy_centers.shape[0]
    bs, n_boxes, _ = gt_bboxes.shape
    lt, rb = gt_bboxes.view(-1, 1, 4).chunk(2, 2)
    bbox_deltas = torch.cat((xy_centers[None] - lt, rb - xy_centers[None]), dim=2).view(bs, n_boxes, n_anchors, -1)
    return bbox_deltas.amin(3).gt_(eps)


def get_box_metrics(pd_scores, pd_bboxes, gt_labels, gt_bboxes, mask, alpha, beta):
    """Alignment metric and CIoU overlaps, both (B, M, A), computed only where ``mask`` (B, M, A) is set.

    pd_scores (B, A, C) probabilities, pd_bboxes (B, A, 4) xyxy, gt_labels (B, M, 1), gt_bboxes (B, M, 4) xyxy.
    """
    bs, n_boxes = gt_bboxes.shape[:2]
    na = pd_bboxes.shape[-2]
    mask = mask.bool()
    overlaps = torch.zeros([bs, n_boxes, na], dtype=pd_bboxes.dtype, device=pd_bboxes.device)
    bbox_scores = torch.zeros([bs, n_boxes, na], dtype=pd_scores.dtype, device=pd_scores.device)

    # predicted probability of each gt's class at every anchor: (B, M, A)
    batch_ind = torch.arange(bs, device=pd_scores.device).view(-1, 1).expand(-1, n_boxes)
    cls_ind = gt_labels.squeeze(-1).long().to(pd_scores.device)
    bbox_scores[mask] = pd_scores[batch_ind, :, cls_ind][mask]

    # CIoU of each (gt, pred) candidate pair, gathered as flat (N, 4) lists
    pd_boxes = pd_bboxes.unsqueeze(1).expand(-1, n_boxes, -1, -1)[mask]
    gt_boxes = gt_bboxes.unsqueeze(2).expand(-1, -1, na, -1)[mask]
    overlaps[mask] = bbox_iou(gt_boxes, pd_boxes, xywh=False, CIoU=True).squeeze(-1).clamp_(0)

    align_metric = bbox_scores.pow(alpha) * overlaps.pow(beta)
    return align_metric, overlaps


def select_topk_candidates(metrics, topk, topk_mask):
    """(B, M, A) metrics -> (B, M, A) 0/1 mask (metrics' dtype) of each gt's top-k anchors.

    ``topk_mask`` (B, M, topk) bool marks valid gts; an invalid gt's k picks all point at anchor 0, which then
    counts k times and is dropped (for k = 1 it survives here and is removed later by the candidate mask).
    """
    _, topk_idxs = torch.topk(metrics, topk, dim=-1, largest=True)
    topk_idxs.masked_fill_(~topk_mask, 0)
    count = torch.zeros(metrics.shape, dtype=torch.int8, device=topk_idxs.device)
    count.scatter_add_(-1, topk_idxs, torch.ones_like(topk_idxs, dtype=torch.int8))
    count.masked_fill_(count > 1, 0)
    return count.to(metrics.dtype)


def select_highest_overlaps(mask_pos, overlaps, n_max_boxes):
    """Resolve anchors claimed by several gts: keep the gt with the highest overlap.

    mask_pos, overlaps (B, M, A) -> target_gt_idx (B, A) int64, fg_mask (B, A) (count of gts, 0/1 after
    resolution, mask_pos' dtype), mask_pos (B, M, A).
    """
    fg_mask = mask_pos.sum(-2)
    if fg_mask.max() > 1:
        mask_multi_gts = (fg_mask.unsqueeze(1) > 1).expand(-1, n_max_boxes, -1)
        max_overlaps_idx = overlaps.argmax(1)
        is_max_overlaps = torch.zeros(mask_pos.shape, dtype=mask_pos.dtype, device=mask_pos.device)
        is_max_overlaps.scatter_(1, max_overlaps_idx.unsqueeze(1), 1)
        mask_pos = torch.where(mask_multi_gts, is_max_overlaps, mask_pos).float()
        fg_mask = mask_pos.sum(-2)
    target_gt_idx = mask_pos.argmax(-2)
    return target_gt_idx, fg_mask, mask_pos


def get_targets(gt_labels, gt_bboxes, target_gt_idx, fg_mask, num_classes):
    """Gather each anchor's assigned gt: labels (B, A) int64, boxes (B, A, 4), one-hot (B, A, C) int64 that is
    zero on background anchors."""
    bs, n_boxes = gt_bboxes.shape[:2]
    batch_ind = torch.arange(bs, dtype=torch.int64, device=gt_labels.device)[..., None]
    flat_idx = target_gt_idx + batch_ind * n_boxes
    target_labels = gt_labels.long().flatten()[flat_idx]
    target_bboxes = gt_bboxes.view(-1, gt_bboxes.shape[-1])[flat_idx]
    target_labels.clamp_(0)

    target_scores = torch.zeros((*target_labels.shape, num_classes), dtype=torch.int64, device=target_labels.device)
    target_scores.scatter_(2, target_labels.unsqueeze(-1), 1)
    target_scores = torch.where(fg_mask[:, :, None] > 0, target_scores, 0)
    return target_labels, target_bboxes, target_scores


class TaskAlignedAssigner(nn.Module):
    """Assigns gt boxes to anchors by the task-aligned metric ``score**alpha * CIoU**beta``.

    YOLOv10 uses ``alpha=0.5, beta=6.0`` with ``topk=10`` (one-to-many head) and ``topk=1`` (one-to-one head);
    the constructor defaults are ultralytics'.

    forward(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt), all on one device:
        pd_scores  (B, A, C) class probabilities (after sigmoid)
        pd_bboxes  (B, A, 4) predicted xyxy boxes, pixels
        anc_points (A, 2)    anchor centres, pixels
        gt_labels  (B, M, 1) class ids (float or int)
        gt_bboxes  (B, M, 4) xyxy gt boxes, pixels (padding rows arbitrary)
        mask_gt    (B, M, 1) 1/True for real gts, 0/False for padding (float or bool)
    returns (target_labels, target_bboxes, target_scores, fg_mask, target_gt_idx):
        target_labels (B, A) int64, target_bboxes (B, A, 4) gt dtype, target_scores (B, A, C) float (soft,
        zero on background), fg_mask (B, A) bool, target_gt_idx (B, A) int64 (0 on background).
    When M == 0 it returns, like ultralytics, tensors shaped as above but all in pd_scores' dtype
    (labels filled with ``num_classes``, everything else 0; fg_mask and target_gt_idx are float, not bool/int64).
    """

    def __init__(self, topk=13, num_classes=80, alpha=1.0, beta=6.0, eps=1e-9):
        super().__init__()
        self.topk = topk
        self.num_classes = num_classes
        self.alpha = alpha
        self.beta = beta
        self.eps = eps

    def extra_repr(self):
        return f"topk={self.topk}, num_classes={self.num_classes}, alpha={self.alpha}, beta={self.beta}"

    @torch.no_grad()
    def forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt):
        if gt_bboxes.shape[1] == 0:
            return (
                torch.full_like(pd_scores[..., 0], self.num_classes),
                torch.zeros_like(pd_bboxes),
                torch.zeros_like(pd_scores),
                torch.zeros_like(pd_scores[..., 0]),
                torch.zeros_like(pd_scores[..., 0]),
            )
        if self.topk > anc_points.shape[0]:
            raise ValueError(f"topk={self.topk} exceeds the number of anchors ({anc_points.shape[0]})")
        inputs = (pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt)
        try:
            return self._forward(*inputs)
        except torch.cuda.OutOfMemoryError:  # like ultralytics: redo it on the CPU (not bit-exact with CUDA)
            device = gt_bboxes.device
            return tuple(t.to(device) for t in self._forward(*(t.cpu() for t in inputs)))

    def _forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt):
        n_boxes = gt_bboxes.shape[1]
        mask_pos, align_metric, overlaps = self.get_pos_mask(
            pd_scores, pd_bboxes, gt_labels, gt_bboxes, anc_points, mask_gt)
        target_gt_idx, fg_mask, mask_pos = select_highest_overlaps(mask_pos, overlaps, n_boxes)
        target_labels, target_bboxes, target_scores = get_targets(
            gt_labels, gt_bboxes, target_gt_idx, fg_mask, self.num_classes)

        # soft targets: alignment relative to the gt's best positive, scaled by the gt's best overlap
        align_metric *= mask_pos
        pos_align_metrics = align_metric.amax(dim=-1, keepdim=True)  # (B, M, 1)
        pos_overlaps = (overlaps * mask_pos).amax(dim=-1, keepdim=True)  # (B, M, 1)
        norm_align_metric = (align_metric * pos_overlaps / (pos_align_metrics + self.eps)).amax(-2).unsqueeze(-1)
        target_scores = target_scores * norm_align_metric

        return target_labels, target_bboxes, target_scores, fg_mask.bool(), target_gt_idx

    def get_pos_mask(self, pd_scores, pd_bboxes, gt_labels, gt_bboxes, anc_points, mask_gt):
        """-> mask_pos (B, M, A) 0/1 float, align_metric (B, M, A), overlaps (B, M, A)."""
        mask_in_gts = select_candidates_in_gts(anc_points, gt_bboxes)
        align_metric, overlaps = get_box_metrics(
            pd_scores, pd_bboxes, gt_labels, gt_bboxes, mask_in_gts * mask_gt, self.alpha, self.beta)
        mask_topk = select_topk_candidates(align_metric, self.topk, mask_gt.expand(-1, -1, self.topk).bool())
        mask_pos = mask_topk * mask_in_gts * mask_gt
        return mask_pos, align_metric, overlaps

    # the ultralytics class exposes these as static methods; kept for drop-in use
    select_candidates_in_gts = staticmethod(select_candidates_in_gts)
    select_highest_overlaps = staticmethod(select_highest_overlaps)
