"""Deterministic synthetic detection dataset ("shapes") in YOLO format: the project's embedded default data.

Eight shape classes drawn with hard edges on smooth, textured, noisy backgrounds; every box is computed from
the object's visible pixel mask (tight and exact); overlaps are limited so that each object keeps at least
65% of its pixels visible; ~6% of images are crowded (15-30 small objects), ~3% have no object. Object sizes
(shape extent) are 8-40% of the image side in normal images, 7-15% in crowded ones (>= 18 px at 256).
Each image has its own random stream seeded by (seed, split, index): the same seed gives byte-identical files.

CLI: ``yolov10 data synth --out DIR [--n-train N] [--n-val N] [--imgsz S] [--seed S]``.
"""
import math
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

CLASSES = ["circle", "square", "triangle", "cross", "star", "ring", "crescent", "heart"]
VERSION = 2
MIN_VISIBLE = 0.65  # an object keeps at least this fraction of its pixels when later objects overlap it
MIN_INSIDE = 0.8  # and at least this fraction inside the image
JPEG_QUALITY = 92


def _circle(n=72, r=1.0, cx=0.0, cy=0.0):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _star(points=5, inner=0.42):
    t = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _heart(n=72):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    xy = np.stack([x, y], 1)
    xy -= (xy.max(0) + xy.min(0)) / 2
    return xy / np.abs(xy).max()


_A = 0.3
# per class: (filled polygons, hole polygons) in unit coordinates (extent about [-1, 1])
SHAPES = {
    "circle": ([_circle()], []),
    "square": ([np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])], []),
    "triangle": ([np.array([[math.cos(a), math.sin(a)] for a in np.deg2rad([-90, 30, 150])]) * 1.1 + [0, 0.15]], []),
    "cross": ([np.array([[-_A, -1], [_A, -1], [_A, -_A], [1, -_A], [1, _A], [_A, _A], [_A, 1], [-_A, 1], [-_A, _A],
                         [-1, _A], [-1, -_A], [-_A, -_A]])], []),
    "star": ([_star()], []),
    "ring": ([_circle()], [_circle(r=0.55)]),
    "crescent": ([_circle()], [_circle(r=0.85, cx=0.5)]),
    "heart": ([_heart()], []),
}
MAX_ROT = {"triangle": 180, "heart": 35}  # degrees; other classes: any rotation


def shape_mask(cls, size, angle, aspect):
    """uint8 mask of class ``cls`` (index) with unit extent scaled to ``size`` px, rotated by ``angle`` degrees
    and stretched by ``aspect`` (w/h), centred in a square patch. Returns (mask, (cx, cy)) in patch pixels."""
    fill, holes = SHAPES[CLASSES[cls]]
    side = int(math.ceil(size * 1.6 * max(aspect, 1 / aspect))) + 4
    c = side / 2
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    stretch = np.array([math.sqrt(aspect), 1 / math.sqrt(aspect)]) * size / 2

    def pts(poly):
        xy = (poly * stretch) @ rot.T + c
        return [np.round(xy * 16).astype(np.int32)]  # 4 fractional bits (shift=4)

    mask = np.zeros((side, side), np.uint8)
    for poly in fill:
        cv2.fillPoly(mask, pts(poly), 1, lineType=cv2.LINE_8, shift=4)
    for poly in holes:
        cv2.fillPoly(mask, pts(poly), 0, lineType=cv2.LINE_8, shift=4)
    return mask, (c, c)


_NOISE = []


def _noise(rng, shape):
    """Standard-normal float32 noise of ``shape``: a random window of a fixed table (fast, deterministic)."""
    n = int(np.prod(shape))
    if not _NOISE or len(_NOISE[0]) < n + 65536:
        _NOISE[:] = [np.random.default_rng(20240523).standard_normal(max(n, 3 * 320 * 320) + 65536, dtype=np.float32)]
    off = int(rng.integers(0, 65536))
    return _NOISE[0][off:off + n].reshape(shape)


def _background(rng, h, w):
    # colour gradient in a random direction plus low-frequency blobs, built on a small grid and upsampled
    g = int(rng.integers(3, 8))
    a = rng.uniform(0, 2 * np.pi)
    gx, gy = np.meshgrid(np.linspace(0, 1, g), np.linspace(0, 1, g))
    t = gx * math.cos(a) + gy * math.sin(a)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    small = c1 + (c2 - c1) * t[..., None] + rng.normal(0, 28, (g, g, 3))
    img = cv2.resize(small.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    kind = rng.random()
    if kind < 0.2:  # stripes
        f, b = rng.uniform(0.05, 0.3), rng.uniform(0, 2 * np.pi)
        xx, yy = np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]
        img += (np.float32(rng.uniform(8, 22)) * np.sin(np.float32(f) * (xx * math.cos(b) + yy * math.sin(b))))[..., None]
    elif kind < 0.35:  # grain
        img += cv2.GaussianBlur(_noise(rng, (h, w)) * 18, (0, 0), 1.5)[..., None]
    img = np.clip(img, 0, 255, out=img).astype(np.uint8)
    if rng.random() < 0.25:  # distractor strokes
        for _ in range(int(rng.integers(2, 8))):
            p1, p2 = rng.integers(0, [w, h]), rng.integers(0, [w, h])
            col = np.clip(img[p1[1], p1[0]].astype(int) + rng.integers(-70, 71, 3), 0, 255)
            cv2.line(img, tuple(int(v) for v in p1), tuple(int(v) for v in p2), tuple(int(v) for v in col),
                     int(rng.integers(1, 3)))
    return img


def _pick_colour(rng, under):
    """A colour far (L1 >= 150) from ``under`` (mean BGR of what the object will cover)."""
    for _ in range(30):
        hsv = np.array([[[rng.integers(0, 180), rng.integers(90, 256), rng.integers(90, 256)]]], np.uint8)
        if rng.random() < 0.12:
            hsv[0, 0, 1] = rng.integers(0, 40)  # greyish
            hsv[0, 0, 2] = rng.integers(0, 256)
        col = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float64)
        if np.abs(col - under).sum() >= 150:
            return col
    return np.where(under > 127, 0.0, 255.0)


def render_image(rng, imgsz):
    """One synthetic image -> (BGR uint8 image, boxes int (n, 4) xyxy edge coordinates, cls int (n,))."""
    S = imgsz
    if rng.random() < 0.25:
        short = int(rng.uniform(0.6, 1.0) * S) // 2 * 2
        h, w = (S, short) if rng.random() < 0.5 else (short, S)
    else:
        h = w = S
    img = _background(rng, h, w)
    u = rng.random()
    if u < 0.03:
        n, lo, hi = 0, 0, 0
    elif u < 0.09:
        n, lo, hi = int(rng.integers(15, 31)), 0.07 * S, 0.15 * S
    else:
        n, lo, hi = int(rng.integers(1, 9)), 0.08 * S, 0.4 * S
    inst = np.zeros((h, w), np.int16)
    area, visible, classes, regions = [0], [0], [], []
    for _ in range(n * 20):
        if len(classes) == n:
            break
        cls = int(rng.integers(0, len(CLASSES)))
        size = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        angle = rng.uniform(-1, 1) * MAX_ROT.get(CLASSES[cls], 180)
        aspect = math.exp(rng.uniform(-0.2, 0.2))
        m, (c, _) = shape_mask(cls, size, angle, aspect)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        x0, y0 = int(round(cx - c)), int(round(cy - c))
        side = m.shape[0]
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        mc = m[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0].astype(bool)
        full, inside = int(m.sum()), int(mc.sum())
        if inside < MIN_INSIDE * full or inside < 30:
            continue
        under_ids = inst[iy0:iy1, ix0:ix1][mc]
        counts = np.bincount(under_ids, minlength=len(area))
        if any(visible[k] - counts[k] < MIN_VISIBLE * area[k] for k in np.nonzero(counts[1:])[0] + 1):
            continue
        k = len(area)
        for j in np.nonzero(counts[1:])[0] + 1:
            visible[j] -= int(counts[j])
        area.append(inside)
        visible.append(inside)
        classes.append(cls)
        regions.append((iy0, iy1, ix0, ix1))
        inst[iy0:iy1, ix0:ix1][mc] = k
        patch = img[iy0:iy1, ix0:ix1]
        col = _pick_colour(rng, patch[mc].reshape(-1, 3).mean(0))
        style = rng.random()
        if style < 0.2:  # two-tone gradient fill
            col2 = np.clip(col + rng.uniform(-60, 60, 3), 0, 255)
            t = np.linspace(0, 1, ix1 - ix0)[None, :, None]
            fill = (col + (col2 - col) * t) * np.ones((iy1 - iy0, 1, 1))
            patch[mc] = fill[mc].astype(np.uint8)
        else:
            patch[mc] = col.astype(np.uint8)
        if 0.2 <= style < 0.45 and size > 24:  # outline inside the mask
            inner = cv2.erode(mc.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=int(rng.integers(1, 3)))
            edge = mc & ~inner.astype(bool)
            patch[edge] = (np.clip(col * rng.uniform(0.3, 0.6), 0, 255)).astype(np.uint8)
    sigma = rng.uniform(1.5, 7)
    img = cv2.add(img, _noise(rng, img.shape) * np.float32(sigma), dtype=cv2.CV_8U)  # saturating
    boxes = []
    for k, (iy0, iy1, ix0, ix1) in enumerate(regions, 1):
        ys, xs = np.nonzero(inst[iy0:iy1, ix0:ix1] == k)
        boxes.append([ix0 + xs.min(), iy0 + ys.min(), ix0 + xs.max() + 1, iy0 + ys.max() + 1])
    return img, np.array(boxes, np.int64).reshape(-1, 4), np.array(classes, np.int64)


def _header(n_train, n_val, imgsz, seed):
    return (f"# Synthetic shapes detection dataset (yolov10.data.synth v{VERSION}): seed {seed}, {n_train} train / "
            f"{n_val} val images, {imgsz} px\n")


def _complete(out, n_train, n_val, imgsz, seed):
    """Whether ``out`` holds the dataset these arguments write."""
    y = Path(out) / "data.yaml"
    return y.is_file() and y.read_text().startswith(_header(n_train, n_val, imgsz, seed)) and all(
        len(list((Path(out) / "labels" / s).glob("*.txt"))) == n for s, n in (("train", n_train), ("val", n_val)))


def make_synthetic_dataset(out_dir, n_train=1500, n_val=200, imgsz=256, seed=0, overwrite=False):
    """Write the dataset under ``out_dir`` (images/{train,val}/*.jpg, labels/{train,val}/*.txt, data.yaml)
    and return the path of data.yaml. Deterministic: the same arguments give byte-identical files. An existing
    dataset written with the same arguments is reused unless ``overwrite``."""
    out = Path(out_dir)
    yaml_path = out / "data.yaml"
    header = _header(n_train, n_val, imgsz, seed)
    if not overwrite and _complete(out, n_train, n_val, imgsz, seed):
        return yaml_path
    yaml_path.unlink(missing_ok=True)  # written last: a dataset without it is incomplete
    for split_code, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        for sub in ("images", "labels"):
            d = out / sub / split
            if d.is_dir():
                shutil.rmtree(d)
            d.mkdir(parents=True)
        for f in (out / "labels").glob(f"{split}*.cache"):
            f.unlink()
        for i in range(n):
            rng = np.random.default_rng([seed, split_code, i])
            img, boxes, cls = render_image(rng, imgsz)
            h, w = img.shape[:2]
            cv2.imwrite(str(out / "images" / split / f"{i:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            lines = [f"{c} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} {(b[2] - b[0]) / w:.6f} "
                     f"{(b[3] - b[1]) / h:.6f}\n" for c, b in zip(cls, boxes)]
            (out / "labels" / split / f"{i:06d}.txt").write_text("".join(lines))
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASSES))
    yaml_path.write_text(header + "# Paths are relative to this file's folder (no 'path' key).\n"
                         f"train: images/train\nval: images/val\nnc: {len(CLASSES)}\nnames:\n{names}")
    return yaml_path


def write_synthetic_dataset(out, n_train, n_val, imgsz, seed, overwrite=False):
    """``make_synthetic_dataset`` plus a one-line summary (the ``yolov10 data synth`` command); returns the YAML path."""
    t0 = time.time()
    reused = not overwrite and _complete(out, n_train, n_val, imgsz, seed)
    yaml_path = make_synthetic_dataset(out, n_train, n_val, imgsz, seed, overwrite)
    nbox = {s: sum(len(f.read_text().splitlines()) for f in (Path(out) / "labels" / s).glob("*.txt"))
            for s in ("train", "val")}
    how = "already there (same arguments), kept" if reused else f"written in {time.time() - t0:.1f} s"
    print(f"synthetic dataset in {Path(out).resolve()} ({how}): "
          f"{n_train} train images ({nbox['train']} boxes), {n_val} val images ({nbox['val']} boxes), "
          f"{len(CLASSES)} classes, {imgsz} px; data YAML: {yaml_path.resolve()}")
    return yaml_path
