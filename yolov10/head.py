"""v10Detect: YOLOv8 box branch + lightweight depthwise classification branch, duplicated as the
one-to-one head (which sees detached features), plus anchor/box decoding and the NMS-free top-k."""
import copy
import math

import torch
import torch.nn as nn

from .modules import DFL, Conv


def make_anchors(feats, strides, grid_cell_offset=0.5):
    """Anchor centres in grid units per level, flattened row-major, and the matching (A, 1) stride tensor."""
    anchor_points, stride_tensor = [], []
    dtype, device = feats[0].dtype, feats[0].device
    for i, stride in enumerate(strides):
        h, w = feats[i].shape[2:]
        sx = torch.arange(end=w, device=device, dtype=dtype) + grid_cell_offset
        sy = torch.arange(end=h, device=device, dtype=dtype) + grid_cell_offset
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        anchor_points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_tensor.append(torch.full((h * w, 1), stride, dtype=dtype, device=device))
    return torch.cat(anchor_points), torch.cat(stride_tensor)


def dist2bbox(distance, anchor_points, xywh=True, dim=-1):
    lt, rb = distance.chunk(2, dim)
    x1y1 = anchor_points - lt
    x2y2 = anchor_points + rb
    if xywh:
        return torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim)
    return torch.cat((x1y1, x2y2), dim)


def bbox2dist(anchor_points, bbox, reg_max):
    x1y1, x2y2 = bbox.chunk(2, -1)
    return torch.cat((anchor_points - x1y1, x2y2 - anchor_points), -1).clamp_(0, reg_max - 0.01)


def topk_postprocess(preds, max_det=300, nc=80):
    """Two-stage top-k without NMS: best anchors by max class score, then best (anchor, class) pairs.
    preds (B, A, 4 + nc) -> (B, min(max_det, A), 6) as x1, y1, x2, y2, score, class."""
    anchors = preds.shape[1]
    k = min(max_det, anchors)
    boxes, scores = preds.split([4, nc], dim=-1)
    index = scores.amax(dim=-1).topk(k)[1].unsqueeze(-1)
    boxes = boxes.gather(dim=1, index=index.repeat(1, 1, 4))
    scores = scores.gather(dim=1, index=index.repeat(1, 1, nc))
    scores, index = scores.flatten(1).topk(k)
    # gather, not boxes[arange(B)[:, None], index // nc]: the same values, but one ONNX GatherElements
    # instead of the legacy exporter's Reshape/Transpose/Gather chain for advanced indexing
    boxes = boxes.gather(dim=1, index=(index // nc).unsqueeze(-1).expand(-1, -1, 4))
    return torch.cat([boxes, scores[..., None], (index % nc)[..., None].float()], dim=-1)


class v10Detect(nn.Module):
    max_det = 300

    def __init__(self, nc=80, ch=()):
        super().__init__()
        self.nc = nc
        self.nl = len(ch)
        self.reg_max = 16
        self.no = nc + self.reg_max * 4
        self.stride = torch.zeros(self.nl)
        c2, c3 = max((16, ch[0] // 4, self.reg_max * 4)), max(ch[0], min(self.nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1)) for x in ch)
        self.cv3 = nn.ModuleList(
            nn.Sequential(
                nn.Sequential(Conv(x, x, 3, g=x), Conv(x, c3, 1)),
                nn.Sequential(Conv(c3, c3, 3, g=c3), Conv(c3, c3, 1)),
                nn.Conv2d(c3, self.nc, 1),
            )
            for x in ch)
        self.dfl = DFL(self.reg_max)
        self.one2one_cv2 = copy.deepcopy(self.cv2)
        self.one2one_cv3 = copy.deepcopy(self.cv3)
        self._anchor_cache = None

    @staticmethod
    def _branch(x, cv2, cv3):
        return [torch.cat((cv2[i](x[i]), cv3[i](x[i])), 1) for i in range(len(x))]

    def forward(self, x):
        one2one = self._branch([xi.detach() for xi in x], self.one2one_cv2, self.one2one_cv3)
        if self.training:
            if not hasattr(self, "cv2"):
                raise RuntimeError("this model was fused for inference (the one-to-many head is gone); "
                                   "it cannot run in train mode")
            return {"one2many": self._branch(x, self.cv2, self.cv3), "one2one": one2one}
        return topk_postprocess(self.decode(one2one).permute(0, 2, 1), self.max_det, self.nc)

    def decode(self, feats):
        """Per-level maps -> (B, 4 + nc, A): xyxy boxes in input pixels and sigmoid class scores."""
        shape = feats[0].shape
        x_cat = torch.cat([xi.view(shape[0], self.no, -1) for xi in feats], 2)
        key = (tuple(f.shape[2:] for f in feats), x_cat.dtype, x_cat.device)
        if self._anchor_cache is None or self._anchor_cache[0] != key:
            anchors, strides = (t.transpose(0, 1) for t in make_anchors(feats, self.stride, 0.5))
            self._anchor_cache = (key, anchors, strides)
        _, anchors, strides = self._anchor_cache
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        dbox = dist2bbox(self.dfl(box), anchors.unsqueeze(0), xywh=False, dim=1) * strides
        return torch.cat((dbox, cls.sigmoid()), 1)

    def bias_init(self):
        for heads in ((self.cv2, self.cv3), (self.one2one_cv2, self.one2one_cv3)):
            for a, b, s in zip(*heads, self.stride):
                a[-1].bias.data[:] = 1.0
                b[-1].bias.data[: self.nc] = math.log(5 / self.nc / (640 / float(s)) ** 2)
