"""COCO ``instances_*.json`` annotations -> the internal label form (same checks and cache as YOLO txt labels).

Category ids are mapped to contiguous class ids in increasing id order (COCO's 91 ids -> the usual 80
classes); crowd annotations (iscrowd=1) are ignored; a box [x, y, w, h] in pixels becomes normalised
cx, cy, w, h using the image's width/height from the JSON."""
import json
import os
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np

from .labels import file_stamp, scan_labels


@lru_cache(maxsize=2)
def _parse(json_file, stamp):
    d = json.loads(Path(json_file).read_text())
    cats = sorted(d.get("categories", []), key=lambda c: c["id"])
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    names = [str(c["name"]) for c in cats]
    anns = defaultdict(list)
    for a in d.get("annotations", []):
        if not a.get("iscrowd", 0):
            anns[a["image_id"]].append(a)
    images = sorted(d.get("images", []), key=lambda im: im["id"])
    return images, anns, cat_index, names


def _load(json_file):
    json_file = str(Path(json_file).expanduser().resolve())
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file {json_file} does not exist")
    return json_file, _parse(json_file, file_stamp(json_file))


def coco_json_images(json_file, images_dir):
    """(absolute image paths listed in the JSON, category names)."""
    _, (images, _, _, names) = _load(json_file)
    return [str((Path(images_dir) / im["file_name"]).resolve()) for im in images], names


def load_coco_json(json_file, images_dir, names=None, cache_dir=None, prefix=""):
    """Checked labels of the images of a COCO detection JSON (``file_name`` relative to ``images_dir``).
    Returns (labels, names): labels in the internal form (usable images only; problems warned, counted and
    skipped as for YOLO txt labels), names = ``names`` if given, else the JSON's category names."""
    json_file, (images, anns, cat_index, cat_names) = _load(json_file)
    names = list(names) if names else cat_names
    im_files, srcs = [], []
    for im in images:
        im_files.append(str((Path(images_dir) / im["file_name"]).resolve()))
        where = f"{json_file} (image id {im['id']})"
        rows = []
        try:
            W, H = float(im["width"]), float(im["height"])
            for a in anns.get(im["id"], []):
                if a["category_id"] not in cat_index:
                    raise ValueError(f"unknown category id {a['category_id']} (not in 'categories')")
                x, y, w, h = (float(v) for v in a["bbox"])
                rows.append([cat_index[a["category_id"]], (x + w / 2) / W, (y + h / 2) / H, w / W, h / H])
            srcs.append((where, np.array(rows, dtype=np.float64).reshape(-1, 5)))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            srcs.append((where, ValueError(f"bad annotation: {e}" if not isinstance(e, ValueError) else str(e))))
    cache = Path(json_file).with_suffix(".yolov10.cache")
    labels = scan_labels(im_files, srcs, len(names), cache,
                         key_extra=f"{json_file}|{file_stamp(json_file)}|{images_dir}",
                         dataset_desc=f"{json_file} (images in {images_dir})", cache_dir=cache_dir, prefix=prefix)
    return labels, names
