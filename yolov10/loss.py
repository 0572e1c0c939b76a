"""YOLOv10 training loss: a v8-style detection loss applied to the one-to-many head (TAL top-10) and to the
one-to-one head (TAL top-1). Parity: ``ultralytics.utils.loss.E2EDetectLoss`` of ultralytics 8.3.253.

Per branch (``DetectionLoss``), with tss = max(sum of the soft class targets, 1):
  box = sum over positives of (1 - CIoU(pred, target)) * w / tss   (boxes in grid units, w = the anchor's soft
        target summed over classes)
  cls = sum over all anchors and classes of BCE-with-logits(logit, soft target) / tss
  dfl = sum over positives of DFL(ltrb bins, target ltrb clamped to [0, reg_max - 1.01]) * w / tss
Each is multiplied by its gain (box 7.5, cls 0.5, dfl 1.5 by default).

Scaling convention (same as ultralytics): ``V10DetectLoss(...)(preds, batch)`` returns
  loss  = sum(B * [box, cls, dfl]_o2m + B * [box, cls, dfl]_o2o)   (a scalar; B = images in this batch,
          i.e. the per-device batch: multiply by the world size yourself under DDP, like ultralytics does)
  items = detached [box_o2m, cls_o2m, dfl_o2m, box_o2o, cls_o2o, dfl_o2o], gains applied, NOT times B.
(ultralytics' E2EDetectLoss returns the unsummed 3-vector and items summed over the two branches.)

Assigner seam: each branch builds its assigner with
  ``assigner_factory(topk=..., num_classes=..., alpha=0.5, beta=6.0)``
which must return a callable with ``yolov10.assign.TaskAlignedAssigner``'s call signature and outputs (only
target_bboxes, target_scores and fg_mask are used). The default factory is that class, so a fused assigner with
the same constructor drops in as ``V10DetectLoss(model, assigner_factory=FusedAssigner)``; a branch's assigner
can also be swapped later (``loss_fn.one2many.assigner = ...``).
"""
import math
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .assign import TaskAlignedAssigner
from .boxes import bbox_iou, xywh2xyxy
from .defaults import LOSS_GAINS
from .head import bbox2dist, dist2bbox, make_anchors

__all__ = ["DEFAULT_HYP", "DFLoss", "BboxLoss", "DetectionLoss", "V10DetectLoss"]

DEFAULT_HYP = LOSS_GAINS
TAL_ALPHA, TAL_BETA = 0.5, 6.0


class DFLoss(nn.Module):
    """Distribution focal loss: cross-entropy towards the two bins around each continuous ltrb target,
    weighted by proximity; mean over the 4 sides -> (N, 1)."""

    def __init__(self, reg_max=16):
        super().__init__()
        self.reg_max = reg_max

    def forward(self, pred_dist, target):
        target = target.clamp_(0, self.reg_max - 1 - 0.01)
        tl = target.long()  # left bin
        tr = tl + 1  # right bin
        wl = tr - target
        wr = 1 - wl
        return (F.cross_entropy(pred_dist, tl.view(-1), reduction="none").view(tl.shape) * wl
                + F.cross_entropy(pred_dist, tr.view(-1), reduction="none").view(tl.shape) * wr).mean(-1, keepdim=True)


class BboxLoss(nn.Module):
    """CIoU box loss and DFL on the foreground anchors, weighted by their soft targets."""

    def __init__(self, reg_max=16):
        super().__init__()
        self.dfl_loss = DFLoss(reg_max)

    def forward(self, pred_dist, pred_bboxes, anchor_points, target_bboxes, target_scores, target_scores_sum,
                fg_mask):
        weight = target_scores.sum(-1)[fg_mask].unsqueeze(-1)
        iou = bbox_iou(pred_bboxes[fg_mask], target_bboxes[fg_mask], xywh=False, CIoU=True)
        loss_iou = ((1.0 - iou) * weight).sum() / target_scores_sum

        reg_max = self.dfl_loss.reg_max
        target_ltrb = bbox2dist(anchor_points, target_bboxes, reg_max - 1)
        loss_dfl = self.dfl_loss(pred_dist[fg_mask].view(-1, reg_max), target_ltrb[fg_mask]) * weight
        loss_dfl = loss_dfl.sum() / target_scores_sum
        return loss_iou, loss_dfl


def _hyp_value(args, key):
    if args is None:
        return None
    if isinstance(args, Mapping):
        return args.get(key)
    return getattr(args, key, None)


def resolve_hyp(model=None, hyp=None):
    """Loss gains: defaults, overridden by ``model.args`` (dict or namespace, as ultralytics models carry) and
    then by ``hyp``. Only the keys box/cls/dfl are read."""
    out = dict(DEFAULT_HYP)
    for source in (getattr(model, "args", None), hyp):
        for key in DEFAULT_HYP:
            value = _hyp_value(source, key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"loss gain {key!r} must be a finite number, got {value!r}")
            out[key] = float(value)
    return out


def _head(model):
    """The detection head (``yolov10.YOLOv10.head`` or an ultralytics-style ``model.model[-1]``)."""
    head = getattr(model, "head", None)
    if head is None or not hasattr(head, "nc"):
        head = model.model[-1]
    return head


class DetectionLoss:
    """One head's loss (ultralytics ``v8DetectionLoss``).

    ``DetectionLoss(nc, stride, reg_max=16, hyp=None, tal_topk=10, assigner_factory=TaskAlignedAssigner)``;
    ``__call__(feats, batch)`` with feats the head's 3 maps (B, 4 * reg_max + nc, H_i, W_i) and batch as in
    ``V10DetectLoss`` returns ``(B * [box, cls, dfl], [box, cls, dfl].detach())`` (gains applied).
    ``loss(feats, targets)`` does the same from already validated (n, 6) [image, cls, xywh] targets.
    """

    def __init__(self, nc, stride, reg_max=16, hyp=None, tal_topk=10, assigner_factory=None):
        self.nc = int(nc)
        self.stride = [float(s) for s in stride]  # plain floats: no device to follow
        self.reg_max = int(reg_max)
        self.no = self.nc + 4 * self.reg_max
        self.hyp = resolve_hyp(None, hyp)
        self.bce = nn.BCEWithLogitsLoss(reduction="none")
        factory = TaskAlignedAssigner if assigner_factory is None else assigner_factory
        self.assigner = factory(topk=tal_topk, num_classes=self.nc, alpha=TAL_ALPHA, beta=TAL_BETA)
        self.bbox_loss = BboxLoss(self.reg_max)
        self.proj = torch.arange(self.reg_max, dtype=torch.float)

    # ---------------------------------------------------------------------------------------------------
    def _check_feats(self, feats):
        if not isinstance(feats, (list, tuple)) or len(feats) != len(self.stride):
            raise ValueError(f"expected a list of {len(self.stride)} prediction maps, got "
                             f"{type(feats).__name__}{'' if not hasattr(feats, '__len__') else f' of {len(feats)}'}")
        for i, f in enumerate(feats):
            if not isinstance(f, torch.Tensor) or f.dim() != 4 or f.shape[1] != self.no \
                    or f.shape[0] != feats[0].shape[0]:
                raise ValueError(f"prediction map {i} must be (B, {self.no}, H, W) "
                                 f"(4 * reg_max {self.reg_max} + nc {self.nc}), got "
                                 f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")

    def preprocess(self, targets, batch_size, scale_tensor):
        """(n, 6) [image, cls, x, y, w, h normalised] -> (B, M, 5) [cls, x1, y1, x2, y2 pixels], zero-padded to
        M = most boxes in one image; each image keeps its boxes in their original order."""
        device = targets.device
        n, ne = targets.shape
        if n == 0:
            return torch.zeros(batch_size, 0, ne - 1, device=device)
        img = targets[:, 0].long()
        counts = torch.bincount(img, minlength=batch_size)
        order = torch.argsort(img, stable=True)
        img_sorted = img[order]
        first = torch.cumsum(counts, 0) - counts  # index of each image's first box in sorted order
        slot = torch.arange(n, device=device) - first[img_sorted]
        out = torch.zeros(batch_size, int(counts.max()), ne - 1, device=device)
        out[img_sorted, slot] = targets[order, 1:]
        out[..., 1:5] = xywh2xyxy(out[..., 1:5].mul_(scale_tensor))
        return out

    def bbox_decode(self, anchor_points, pred_dist):
        """(B, A, 4 * reg_max) bin logits -> (B, A, 4) xyxy boxes in grid units."""
        b, a, c = pred_dist.shape
        proj = self.proj.to(device=pred_dist.device, dtype=pred_dist.dtype)
        pred_dist = pred_dist.view(b, a, 4, c // 4).softmax(3).matmul(proj)
        return dist2bbox(pred_dist, anchor_points, xywh=False)

    def __call__(self, feats, batch):
        self._check_feats(feats)
        return self.loss(feats, batch_targets(batch, feats[0].shape[0], self.nc, feats[0].device))

    def loss(self, feats, targets):
        device = feats[0].device
        batch_size = feats[0].shape[0]
        pred_distri, pred_scores = torch.cat([xi.reshape(batch_size, self.no, -1) for xi in feats], 2).split(
            (self.reg_max * 4, self.nc), 1)
        pred_scores = pred_scores.permute(0, 2, 1).contiguous()  # (B, A, nc) logits
        pred_distri = pred_distri.permute(0, 2, 1).contiguous()  # (B, A, 4 * reg_max)

        dtype = pred_scores.dtype
        imgsz = torch.tensor(feats[0].shape[2:], device=device, dtype=dtype) * self.stride[0]  # (h, w) pixels
        anchor_points, stride_tensor = make_anchors(feats, self.stride, 0.5)

        targets = self.preprocess(targets, batch_size, scale_tensor=imgsz[[1, 0, 1, 0]])
        gt_labels, gt_bboxes = targets.split((1, 4), 2)
        mask_gt = gt_bboxes.sum(2, keepdim=True).gt_(0.0)

        pred_bboxes = self.bbox_decode(anchor_points, pred_distri)  # (B, A, 4) xyxy, grid units
        _, target_bboxes, target_scores, fg_mask, _ = self.assigner(
            pred_scores.detach().sigmoid(),
            (pred_bboxes.detach() * stride_tensor).type(gt_bboxes.dtype),
            anchor_points * stride_tensor,
            gt_labels,
            gt_bboxes,
            mask_gt,
        )
        fg_mask = fg_mask.bool()
        target_scores_sum = target_scores.sum().clamp(min=1)

        loss = torch.zeros(3, device=device)  # box, cls, dfl
        loss[1] = self.bce(pred_scores, target_scores.to(dtype)).sum() / target_scores_sum
        # no foreground -> empty selections, box and dfl are exactly 0 (no host sync needed to skip them)
        loss[0], loss[2] = self.bbox_loss(pred_distri, pred_bboxes, anchor_points, target_bboxes / stride_tensor,
                                          target_scores, target_scores_sum, fg_mask)
        loss[0] *= self.hyp["box"]
        loss[1] *= self.hyp["cls"]
        loss[2] *= self.hyp["dfl"]
        return loss * batch_size, loss.detach()


def batch_targets(batch, batch_size, nc, device):
    """Validate batch["batch_idx" (n,), "cls" (n, 1), "bboxes" (n, 4) normalised xywh] -> (n, 6) targets."""
    if not isinstance(batch, Mapping):
        raise ValueError(f"batch must be a dict, got {type(batch).__name__}")
    missing = [k for k in ("batch_idx", "cls", "bboxes") if k not in batch]
    if missing:
        raise ValueError(f"batch is missing key(s) {missing}; the loss needs 'batch_idx' (n,), 'cls' (n, 1) and "
                         f"'bboxes' (n, 4) normalised xywh")
    tensors = {k: torch.as_tensor(batch[k]) for k in ("batch_idx", "cls", "bboxes")}
    bboxes = tensors["bboxes"]
    if bboxes.dim() != 2 or bboxes.shape[1] != 4:
        raise ValueError(f"batch['bboxes'] must be (n, 4) normalised xywh, got shape {tuple(bboxes.shape)}")
    n = bboxes.shape[0]
    for k in ("batch_idx", "cls"):
        t = tensors[k]
        if t.numel() != n or (t.dim() == 2 and t.shape[1] != 1) or t.dim() > 2:
            raise ValueError(f"batch[{k!r}] must be (n,) or (n, 1) with n = {n} (the number of boxes), "
                             f"got shape {tuple(t.shape)}")
    if n:
        cls, idx = tensors["cls"], tensors["batch_idx"]
        if cls.min() < 0 or cls.max() >= nc:
            raise ValueError(f"class ids must be in [0, {nc}), got min {cls.min().item()} max {cls.max().item()}")
        if idx.min() < 0 or idx.max() >= batch_size:
            raise ValueError(f"batch_idx must be in [0, {batch_size}) (the prediction batch size), got min "
                             f"{idx.min().item()} max {idx.max().item()}")
    return torch.cat([tensors["batch_idx"].view(-1, 1).to(device, torch.float32),
                      tensors["cls"].view(-1, 1).to(device, torch.float32),
                      bboxes.to(device, torch.float32)], 1)


class V10DetectLoss:
    """YOLOv10 loss = DetectionLoss(top-10) on preds["one2many"] + DetectionLoss(top-1) on preds["one2one"].

    ``V10DetectLoss(model, hyp=None, assigner_factory=None)``:
      model: ``yolov10.YOLOv10`` (or an ultralytics DetectionModel; a DDP wrapper is unwrapped); nc, strides and
        reg_max come from its
        head, gains from ``model.args`` if present (dict or namespace), then ``hyp`` (dict with any of
        box/cls/dfl; other keys ignored), else defaults box 7.5 / cls 0.5 / dfl 1.5.
      assigner_factory: ``factory(topk=, num_classes=, alpha=, beta=)`` -> assigner; default
        ``yolov10.assign.TaskAlignedAssigner``.
    ``__call__(preds, batch)``: preds = train-mode model output {"one2many": [3 maps], "one2one": [3 maps]}
      (a (y, preds) tuple is also accepted); batch = {"cls" (n, 1), "bboxes" (n, 4) normalised xywh,
      "batch_idx" (n,)}, others ignored. Returns (loss scalar, items (6,)); see the module docstring for scaling.
    """

    def __init__(self, model, hyp=None, assigner_factory=None):
        model = getattr(model, "module", model)  # DistributedDataParallel / DataParallel wrapper
        head = _head(model)
        stride = getattr(head, "stride", None)
        if stride is None:
            stride = model.stride
        self.hyp = resolve_hyp(model, hyp)
        kw = dict(nc=head.nc, stride=stride, reg_max=getattr(head, "reg_max", 16), hyp=self.hyp,
                  assigner_factory=assigner_factory)
        self.one2many = DetectionLoss(tal_topk=10, **kw)
        self.one2one = DetectionLoss(tal_topk=1, **kw)

    def __call__(self, preds, batch):
        preds = preds[1] if isinstance(preds, tuple) else preds
        if not isinstance(preds, Mapping) or not {"one2many", "one2one"} <= preds.keys():
            raise ValueError("preds must be the train-mode output {'one2many': [3 maps], 'one2one': [3 maps]}, got "
                             f"{type(preds).__name__}"
                             f"{' with keys ' + str(list(preds.keys())) if isinstance(preds, Mapping) else ''}")
        feats_m, feats_o = preds["one2many"], preds["one2one"]
        self.one2many._check_feats(feats_m)
        self.one2one._check_feats(feats_o)
        if feats_m[0].shape[0] != feats_o[0].shape[0]:
            raise ValueError(f"one2many and one2one batch sizes differ: {feats_m[0].shape[0]} vs {feats_o[0].shape[0]}")
        targets = batch_targets(batch, feats_m[0].shape[0], self.one2many.nc, feats_m[0].device)  # validated once
        loss_m, items_m = self.one2many.loss(feats_m, targets)
        loss_o, items_o = self.one2one.loss(feats_o, targets)
        return (loss_m + loss_o).sum(), torch.cat((items_m, items_o))
