"""Image + box transforms of the official YOLOv8/v10 training pipeline (OpenCV/NumPy).

Conventions used by every function here:
- images are HWC uint8 BGR (as cv2 reads them), converted to RGB only when a sample is formatted;
- boxes are float32 (n, 4) pixel xyxy in *edge* coordinates: pixel column i covers [i, i+1), so a box that
  tightly covers pixels x0..x1 is [x0, x1 + 1). Resizes and warps below use the same convention, so boxes
  stay exact (to interpolation blur) through every transform;
- randomness comes from Python's ``random`` module only, so seeding ``random`` makes a pipeline deterministic.
"""
import math
import random

import cv2
import numpy as np

PAD_VALUE = 114

# Official default.yaml augmentation hyper-parameters (identical in THU-MIG YOLOv10 and ultralytics 8.x).
DEFAULT_HYP = {
    "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4,
    "degrees": 0.0, "translate": 0.1, "scale": 0.5, "shear": 0.0, "perspective": 0.0,
    "flipud": 0.0, "fliplr": 0.5, "mosaic": 1.0, "close_mosaic": 10,
}


def letterbox(img, new_shape=640, color=(PAD_VALUE, PAD_VALUE, PAD_VALUE), auto=False, stride=32, scaleup=True,
              center=True):
    """Resize keeping the aspect ratio, then pad to ``new_shape`` ((h, w) or an int for a square).

    auto=True pads only up to the next multiple of ``stride`` (minimal rectangle); scaleup=False never enlarges.
    Returns ``(img, (ratio, pad))`` in the ultralytics ``ratio_pad`` layout: ratio = (gain_h, gain_w), the exact
    per-axis scales after rounding (equal to within half a pixel), and pad = (left, top) in pixels. A point maps
    to the letterboxed image as ``x' = x * gain_w + left, y' = y * gain_h + top``, and back with
    ``x = (x' - left) / gain_w``, ``y = (y' - top) / gain_h``.
    """
    shape = img.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    new_w, new_h = max(int(round(shape[1] * r)), 1), max(int(round(shape[0] * r)), 1)
    dw, dh = new_shape[1] - new_w, new_shape[0] - new_h
    if auto:
        dw, dh = dw % stride, dh % stride
    if (new_h, new_w) != shape:
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if center:
        left, top = dw // 2, dh // 2
    else:
        left, top = 0, 0
    right, bottom = dw - left, dh - top
    if dw or dh:
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=tuple(color))
    return img, ((new_h / shape[0], new_w / shape[1]), (left, top))


def scale_boxes(boxes, ratio, pad):
    """Apply a letterbox ``(ratio, pad)`` = ((gain_h, gain_w), (left, top)) to pixel xyxy boxes (a new array)."""
    out = np.asarray(boxes, dtype=np.float32).copy()
    out[:, [0, 2]] = out[:, [0, 2]] * ratio[1] + pad[0]
    out[:, [1, 3]] = out[:, [1, 3]] * ratio[0] + pad[1]
    return out


def clip_boxes(boxes, w, h):
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes


def box_candidates(box1, box2, wh_thr=2, ar_thr=100, area_thr=0.1, eps=1e-16):
    """Official filter after a geometric transform. box1 (n, 4): boxes before (scaled by the warp's scale),
    box2 (n, 4): boxes after, both xyxy. Keeps boxes wider and taller than wh_thr px, keeping more than
    area_thr of their area, with aspect ratio below ar_thr."""
    w1, h1 = box1[:, 2] - box1[:, 0], box1[:, 3] - box1[:, 1]
    w2, h2 = box2[:, 2] - box2[:, 0], box2[:, 3] - box2[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def random_perspective(img, boxes, cls, degrees=0.0, translate=0.1, scale=0.5, shear=0.0, perspective=0.0,
                       border=(0, 0), area_thr=0.1):
    """Random affine/perspective warp (official RandomPerspective). ``border`` (by, bx) grows (>0) or
    shrinks (<0) the output: out size = in size + 2 * border; the mosaic uses (-s/2, -s/2) to cut the
    2s canvas down to s. Returns (img, boxes, cls) with boxes clipped to the output and filtered by
    box_candidates."""
    height = img.shape[0] + border[0] * 2
    width = img.shape[1] + border[1] * 2

    C = np.eye(3, dtype=np.float64)  # move the centre to the origin
    C[0, 2] = -img.shape[1] / 2
    C[1, 2] = -img.shape[0] / 2
    P = np.eye(3, dtype=np.float64)
    P[2, 0] = random.uniform(-perspective, perspective)
    P[2, 1] = random.uniform(-perspective, perspective)
    R = np.eye(3, dtype=np.float64)
    a = random.uniform(-degrees, degrees)
    s = random.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    S = np.eye(3, dtype=np.float64)
    S[0, 1] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    T = np.eye(3, dtype=np.float64)
    T[0, 2] = random.uniform(0.5 - translate, 0.5 + translate) * width
    T[1, 2] = random.uniform(0.5 - translate, 0.5 + translate) * height
    M = T @ S @ R @ P @ C  # acts on edge coordinates (the boxes' convention)

    if border[0] != 0 or border[1] != 0 or (M != np.eye(3)).any():
        # cv2 warps pixel indices (pixel centres at integers): conjugate by the half-pixel shift
        H = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]]) @ M @ np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
        fill = (PAD_VALUE,) * 3
        if perspective:
            img = cv2.warpPerspective(img, H, dsize=(width, height), borderValue=fill)
        else:
            img = cv2.warpAffine(img, H[:2], dsize=(width, height), borderValue=fill)

    n = len(boxes)
    if n:
        xy = np.ones((n * 4, 3), dtype=np.float64)
        xy[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
        xy = xy @ M.T
        xy = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 8)
        x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
        new = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1).astype(np.float32)
        clip_boxes(new, width, height)
        keep = box_candidates(boxes * s, new, area_thr=area_thr)
        boxes, cls = new[keep], cls[keep]
    return img, boxes, cls


def random_hsv(img, hgain=0.5, sgain=0.5, vgain=0.5):
    """Official RandomHSV: multiply H, S, V by random gains in [1-g, 1+g] through lookup tables (in place)."""
    if not (hgain or sgain or vgain):
        return img
    r = np.array([random.uniform(-1, 1) * g + 1 for g in (hgain, sgain, vgain)])
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    im_hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(im_hsv, cv2.COLOR_HSV2BGR, dst=img)
    return img


def fliplr(img, boxes):
    w = img.shape[1]
    boxes = boxes.copy()
    boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    return np.ascontiguousarray(img[:, ::-1]), boxes


def flipud(img, boxes):
    h = img.shape[0]
    boxes = boxes.copy()
    boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
    return np.ascontiguousarray(img[::-1]), boxes


def mosaic4(samples, s, xc, yc):
    """Place 4 (img, boxes, cls) samples around the centre (xc, yc) of a 2s x 2s grey canvas: top-left,
    top-right, bottom-left, bottom-right, each image touching the centre. Returns (canvas, boxes, cls) with
    boxes clipped to the canvas and zero-area boxes dropped."""
    canvas = np.full((2 * s, 2 * s, samples[0][0].shape[2]), PAD_VALUE, dtype=np.uint8)
    all_boxes, all_cls = [], []
    for k, (img, boxes, cls) in enumerate(samples):
        h, w = img.shape[:2]
        if k == 0:
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif k == 1:
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif k == 2:
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        b = boxes.copy()
        b[:, [0, 2]] += x1a - x1b
        b[:, [1, 3]] += y1a - y1b
        all_boxes.append(b)
        all_cls.append(cls)
    boxes = clip_boxes(np.concatenate(all_boxes, 0), 2 * s, 2 * s)
    cls = np.concatenate(all_cls, 0)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return canvas, boxes[keep], cls[keep]
