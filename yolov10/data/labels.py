"""Label files: parsing, checks and the label cache, shared by the YOLO-txt and COCO-JSON readers.

Internal label form (one dict per usable image):
``{"im_file": str, "shape": (h, w), "cls": float32 (n,), "bboxes": float32 (n, 4) normalised xywh}``.
"""
import hashlib
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from ..boxes import xywh2xyxy, xyxy2xywh

__all__ = ["COORD_TOL", "img2label_paths", "parse_label_rows", "check_rows", "file_stamp", "scan_labels",
           "load_yolo_labels"]

LOGGER = logging.getLogger("yolov10.data")
COORD_TOL = 0.01  # normalised coordinates may exceed [0, 1] by this much (rounding); they are clipped
CACHE_VERSION = "yolov10-labels-1"


def img2label_paths(im_files):
    """Label file of each image: the last /images/ path component -> /labels/, extension -> .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [sb.join(str(f).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt" for f in im_files]


def parse_label_rows(text):
    """Rows of a YOLO label file -> float64 (n, 5) [cls, cx, cy, w, h]; polygon rows (cls x1 y1 x2 y2 ...,
    at least 3 points) become their bounding box. Raises ValueError naming the bad line."""
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            vals = [float(v) for v in parts]
        except ValueError:
            raise ValueError(f"line {i}: non-numeric value in {line.strip()!r}") from None
        if len(vals) == 5:
            rows.append(vals)
        elif len(vals) >= 7 and len(vals) % 2 == 1:  # segment polygon -> box
            xy = np.array(vals[1:]).reshape(-1, 2)
            (x1, y1), (x2, y2) = xy.min(0), xy.max(0)
            rows.append([vals[0], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
        else:
            raise ValueError(f"line {i}: {len(vals)} columns, expected 5 (cls cx cy w h)")
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def check_rows(rows, nc):
    """Validate (n, 5) label rows. Returns (cls float32 (m,), bboxes float32 (m, 4) normalised xywh, notes)
    where notes lists non-fatal fixes; raises ValueError on a fatal problem."""
    notes = []
    if len(rows) == 0:
        return np.zeros(0, np.float32), np.zeros((0, 4), np.float32), notes
    c, xywh = rows[:, 0], rows[:, 1:5]
    if not np.isfinite(rows).all():
        raise ValueError("non-finite value (nan/inf)")
    if (c < 0).any():
        raise ValueError(f"negative class id {c.min():g}")
    if (c != np.round(c)).any():
        raise ValueError(f"non-integer class id {c[c != np.round(c)][0]:g}")
    if nc is not None and (c >= nc).any():
        raise ValueError(f"class id {int(c.max())} out of range: the dataset has {nc} classes (ids 0..{nc - 1})")
    if (xywh < -COORD_TOL).any():
        raise ValueError(f"negative coordinate {xywh.min():g}")
    if (xywh > 1 + COORD_TOL).any():
        raise ValueError(f"coordinate {xywh.max():g} > 1: coordinates must be normalised to [0, 1]")
    xyxy = xywh2xyxy(xywh).clip(0, 1)
    ok = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    if not ok.all():
        notes.append(f"dropped {int((~ok).sum())} zero-size box(es)")
    c, xyxy = c[ok], xyxy[ok]
    _, first = np.unique(np.concatenate([c[:, None], xyxy], 1), axis=0, return_index=True)
    if len(first) < len(c):
        notes.append(f"dropped {len(c) - len(first)} duplicate box(es)")
        first = np.sort(first)
        c, xyxy = c[first], xyxy[first]
    return c.astype(np.float32), xyxy2xywh(xyxy).astype(np.float32), notes


def _read_image_shape(im_file):
    """(h, w) of a decodable image, else None."""
    try:
        im = cv2.imread(im_file)
    except Exception:
        im = None
    return None if im is None or im.size == 0 else im.shape[:2]


def _verify(im_file, label, nc):
    """-> (label dict or None, messages, skip kind or None). ``label``: a label .txt path or a tuple
    (where, rows) of already parsed rows (COCO)."""
    shape = _read_image_shape(im_file)
    if shape is None:
        return None, [f"{im_file}: corrupt or unreadable image, skipped"], "unreadable"
    if isinstance(label, tuple):
        where, rows = label
        if isinstance(rows, Exception):
            return None, [f"{where}: {rows}; image {im_file} skipped"], "with bad labels"
    else:
        where = label
        try:
            rows = parse_label_rows(Path(label).read_text()) if os.path.isfile(label) else np.zeros((0, 5))
        except (ValueError, UnicodeDecodeError) as e:
            return None, [f"{label}: {e}; image {im_file} skipped"], "with bad labels"
    try:
        cls, bboxes, notes = check_rows(rows, nc)
    except ValueError as e:
        return None, [f"{where}: {e}; image {im_file} skipped"], "with bad labels"
    msgs = [f"{where}: {n}" for n in notes]
    return {"im_file": im_file, "shape": shape, "cls": cls, "bboxes": bboxes}, msgs, None


def file_stamp(p):
    """size:mtime of a file ('-' when missing): a cache key changes when the file does."""
    try:
        st = os.stat(p)
        return f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return "-"


def _files_hash(im_files, label_files, extra=""):
    h = hashlib.sha256(f"{CACHE_VERSION}|{extra}".encode())
    for i, f in enumerate(im_files):
        h.update(f"{f}|{file_stamp(f)}".encode())
        if label_files is not None:
            h.update(f"{label_files[i]}|{file_stamp(label_files[i])}".encode())
    return h.hexdigest()


def _fallback_cache(cache_path, cache_dir=None):
    d = Path(cache_dir or os.environ.get("YOLOV10_CACHE_DIR") or Path.home() / ".cache" / "yolov10")
    return d / f"{hashlib.sha1(str(cache_path).encode()).hexdigest()[:16]}-{Path(cache_path).name}"


def _load_cache(path, key):
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["version"]) != CACHE_VERSION or str(z["hash"]) != key:
                return None
            im_files, shapes, counts = z["im_files"].tolist(), z["shapes"], z["counts"]
            cls, bboxes = z["cls"], z["bboxes"]
            msgs, skips, n_total = z["msgs"].tolist(), z["skips"].tolist(), int(z["n_total"])
    except Exception:  # missing, unreadable, another tool's cache format
        return None
    ends = np.cumsum(counts)
    labels = [{"im_file": f, "shape": tuple(int(v) for v in shapes[i]), "cls": cls[e - n:e], "bboxes": bboxes[e - n:e]}
              for i, (f, n, e) in enumerate(zip(im_files, counts, ends))]
    return labels, msgs, skips, n_total


def _save_cache(path, key, labels, msgs, skips, n_total):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, version=np.array(CACHE_VERSION), hash=np.array(key),
                 im_files=np.array([lb["im_file"] for lb in labels], dtype=str),
                 shapes=np.array([lb["shape"] for lb in labels], dtype=np.int64).reshape(-1, 2),
                 counts=np.array([len(lb["cls"]) for lb in labels], dtype=np.int64),
                 cls=np.concatenate([lb["cls"] for lb in labels] or [np.zeros(0, np.float32)]),
                 bboxes=np.concatenate([lb["bboxes"] for lb in labels] or [np.zeros((0, 4), np.float32)]),
                 msgs=np.array(msgs, dtype=str), skips=np.array(skips, dtype=str), n_total=np.array(n_total))
    os.replace(tmp, path)


def scan_labels(im_files, label_srcs, nc, cache_path, key_extra="", dataset_desc=None, cache_dir=None, prefix=""):
    """Check every (image, label) pair, with a cache at ``cache_path`` (or in the cache dir when that is not
    writable) keyed by a hash of file names, sizes and mtimes. One warning per problem, a summary of the
    skipped images, and a ValueError naming the dataset when no image is usable.

    label_srcs: per image, a label .txt path or (where, rows) parsed rows (the COCO reader passes these; its
    JSON's stat then goes into ``key_extra``). Returns the list of label dicts of the usable images.
    Sets ``scan_labels.last_from_cache`` (for tests and logs)."""
    desc = dataset_desc or (str(Path(cache_path).parent) if cache_path else "dataset")
    if not im_files:
        raise ValueError(f"{prefix}no images found in {desc}")
    txt_labels = None if isinstance(label_srcs[0], tuple) else list(label_srcs)
    key = _files_hash(im_files, txt_labels, f"{key_extra}|nc={nc}|tol={COORD_TOL}")
    cands = [Path(cache_dir) / Path(cache_path).name if cache_dir else Path(cache_path), _fallback_cache(cache_path, cache_dir)]
    cached = None
    for cand in cands:
        cached = _load_cache(cand, key)
        if cached is not None:
            LOGGER.info(f"{prefix}labels from cache {cand}")
            break
    scan_labels.last_from_cache = cached is not None
    if cached is None:
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as ex:  # cv2 decodes without the GIL
            results = list(ex.map(_verify, im_files, label_srcs, [nc] * len(im_files)))
        labels = [r[0] for r in results if r[0] is not None]
        msgs = [m for r in results for m in r[1]]
        skips = [r[2] for r in results if r[2] is not None]
        n_total = len(im_files)
        for cand in cands:
            try:
                _save_cache(cand, key, labels, msgs, skips, n_total)
                LOGGER.info(f"{prefix}label cache written to {cand}")
                break
            except OSError:
                continue
    else:
        labels, msgs, skips, n_total = cached
    for m in msgs:
        LOGGER.warning(f"{prefix}{m}")
    if skips:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(Counter(skips).items()))
        LOGGER.warning(f"{prefix}skipped {len(skips)} of {n_total} images: {kinds} (see the warnings above)")
    if not labels:
        raise ValueError(f"{prefix}no usable image in {desc}: all {n_total} images were skipped")
    nb = sum(len(lb["cls"]) for lb in labels)
    nbg = sum(len(lb["cls"]) == 0 for lb in labels)
    LOGGER.info(f"{prefix}{desc}: {len(labels)} images ({nbg} backgrounds), {nb} boxes, {len(skips)} skipped")
    return labels


scan_labels.last_from_cache = False


def load_yolo_labels(im_files, names=None, cache_dir=None, prefix=""):
    """Checked labels of YOLO-txt images (label path = image path with /images/ -> /labels/, .txt)."""
    label_files = img2label_paths(im_files)
    nc = None if names is None else len(names)
    label_dir = Path(label_files[0]).parent if label_files else Path(".")
    if label_files and not any(os.path.isfile(f) for f in label_files):
        LOGGER.warning(f"{prefix}no label files found (looked for {label_files[0]}, ...): every image is a "
                       f"background; for COCO JSON annotations use load_coco_json / build_yolo_dataset")
    cache = label_dir.parent / f"{label_dir.name}.yolov10.cache"
    desc = str(Path(os.path.commonpath(im_files)) if im_files else label_dir)
    return scan_labels(im_files, label_files, nc, cache, dataset_desc=desc, cache_dir=cache_dir, prefix=prefix)
