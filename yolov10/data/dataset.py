"""YOLO-format datasets: the data YAML, image lists, the torch Dataset (labels from ``labels.py`` or a COCO JSON)
and its loader."""
import logging
import math
import os
import random
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from ..boxes import xywh2xyxy, xyxy2xywh
from ..defaults import AUGMENT_DEFAULTS
from .augment import clip_boxes, fliplr, flipud, letterbox, mosaic4, random_hsv, random_perspective, scale_boxes
from .coco import coco_json_images, load_coco_json
from .labels import load_yolo_labels

LOGGER = logging.getLogger("yolov10.data")
IMG_FORMATS = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm"}


# ---------------------------------------------------------------------------------------------------------
# files
def _is_image(p):
    return str(p).rsplit(".", 1)[-1].lower() in IMG_FORMATS


def list_images(source, root=None):
    """Absolute, sorted image paths from a directory (searched recursively), a .txt list of image paths (lines
    relative to the .txt's folder), an image file, or a list of any of these. Relative sources are taken
    relative to ``root`` (default: the working directory)."""
    items = source if isinstance(source, (list, tuple)) else [source]
    files = []
    for item in items:
        p = Path(item)
        if not p.is_absolute() and root is not None:
            p = Path(root) / p
        p = p.expanduser()
        if p.is_dir():
            files += [str(f.resolve()) for f in p.rglob("*") if f.is_file() and _is_image(f)]
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text().splitlines():
                line = line.strip()
                if line:
                    q = Path(line)
                    files.append(str((q if q.is_absolute() else p.parent / q).resolve()))
        elif p.is_file() and _is_image(p):
            files.append(str(p.resolve()))
        else:
            raise FileNotFoundError(f"image source {p} does not exist or is not an image, a folder or a .txt list")
    return sorted(set(files))


def _names_list(names):
    if names is None:
        return None
    if isinstance(names, dict):
        keys = sorted(int(k) for k in names)
        if keys != list(range(len(keys))):
            raise ValueError(f"class names must have ids 0..{len(keys) - 1}, got {keys}")
        return [str(names[k] if k in names else names[str(k)]) for k in keys]
    return [str(n) for n in names]


def load_data_yaml(path):
    """Read an ultralytics-style data YAML.

    Keys: ``path`` (dataset root; absolute, or relative to the YAML's folder; default the YAML's folder),
    ``train`` / ``val`` / ``test`` (a folder of images, a .txt list of image paths, or a list of these, relative
    to ``path``), ``names`` (list or {id: name}). A split whose value is a COCO ``instances_*.json`` file, or
    that has a ``<split>_json`` key next to it, is read from that JSON (images in ``<split>_images``, or in the
    ``train``/``val`` folder, or in ``images/<name>`` / ``<name>`` under ``path`` with name = the JSON's stem
    without ``instances_``); ``names`` then defaults to the JSON's categories.

    Returns a dict with ``yaml_file``, ``path``, ``names`` (list), ``nc``, and per split present: ``<split>``
    = sorted absolute image paths, plus ``<split>_json`` / ``<split>_images`` (absolute) for COCO-JSON splits
    (build datasets with ``build_yolo_dataset(data, split, ...)`` so those are used).
    """
    yaml_file = Path(path).expanduser().resolve()
    if not yaml_file.is_file():
        raise FileNotFoundError(f"data YAML {yaml_file} does not exist")
    cfg = yaml.safe_load(yaml_file.read_text()) or {}
    root = Path(cfg.get("path") or yaml_file.parent).expanduser()
    if not root.is_absolute():
        root = (yaml_file.parent / root) if (yaml_file.parent / root).exists() else root.resolve()
    root = root.resolve()
    out = {"yaml_file": str(yaml_file), "path": str(root)}
    names = _names_list(cfg.get("names"))
    for split in ("train", "val", "test"):
        src = cfg.get(split)
        ann = cfg.get(f"{split}_json")
        if isinstance(src, str) and src.endswith(".json") and not ann:
            ann, src = src, cfg.get(f"{split}_images")
        if ann:
            ann = _abs(ann, root)
            images_dir = _coco_images_dir(cfg.get(f"{split}_images") or src, ann, root)
            im_files, cat_names = coco_json_images(ann, images_dir)
            out[split], out[f"{split}_json"], out[f"{split}_images"] = im_files, str(ann), str(images_dir)
            names = names or cat_names
        elif src:
            out[split] = list_images(src, root)
    if names is None:
        raise ValueError(f"data YAML {yaml_file} has no 'names'")
    if "nc" in cfg and int(cfg["nc"]) != len(names):
        raise ValueError(f"data YAML {yaml_file}: nc={cfg['nc']} but {len(names)} names")
    if "train" not in out and "val" not in out:
        raise ValueError(f"data YAML {yaml_file} defines neither 'train' nor 'val'")
    out["names"], out["nc"] = names, len(names)
    return out


def _abs(p, root):
    p = Path(p).expanduser()
    return (p if p.is_absolute() else Path(root) / p).resolve()


def _coco_images_dir(src, ann, root):
    if src:
        return _abs(src, root)
    name = Path(ann).stem.replace("instances_", "")
    for cand in (Path(root) / "images" / name, Path(root) / name):
        if cand.is_dir():
            return cand.resolve()
    raise FileNotFoundError(f"no image folder for {ann}: set '<split>_images' in the data YAML "
                            f"(tried {Path(root) / 'images' / name} and {Path(root) / name})")


# ---------------------------------------------------------------------------------------------------------
# dataset
def _hyp(hyp):
    out = dict(AUGMENT_DEFAULTS)
    if hyp is not None:
        src = hyp if isinstance(hyp, dict) else vars(hyp)
        out.update({k: src[k] for k in AUGMENT_DEFAULTS if k in src and src[k] is not None})
    return out


class YOLODataset(Dataset):
    """Detection dataset with the official train augmentation (mosaic -> random perspective -> HSV -> flips) or
    the eval letterbox.

    img_path: image folder, .txt list, image file, a list of these, or a list of label dicts (the internal
    form, e.g. from ``load_coco_json``). With ``json_file`` the labels come from that COCO JSON (images in
    ``images_dir``, default ``img_path`` when that is a folder). names: class names (enables the class-id
    check). hyp: dict or namespace with any of AUGMENT_DEFAULTS' keys. rect (eval only): batches of similar aspect
    ratio letterboxed to a per-batch shape (images sorted by aspect ratio; use the same ``batch_size`` and no
    shuffling in the loader). cache_images: decode every image once, resized, and keep it in RAM (about
    imgsz^2 * 3 bytes per image; the loader's forked workers share it).

    Sample: {"img": uint8 (3, H, W) RGB, "cls": float32 (n, 1), "bboxes": float32 (n, 4) normalised xywh,
    "im_file", "ori_shape": (h0, w0), "ratio_pad": ((gain_h, gain_w), (pad_left, pad_top))} where ratio_pad
    maps the network image back to the original: x0 = (x - pad_left) / gain_w (eval mode; in train mode it
    describes the un-augmented resize only).
    """

    def __init__(self, img_path, imgsz=640, augment=False, hyp=None, rect=False, batch_size=16, stride=32, pad=0.5,
                 names=None, json_file=None, images_dir=None, cache_dir=None, cache_images=False, prefix=""):
        super().__init__()
        self.stride = int(stride)
        self.imgsz = int(math.ceil(int(imgsz) / self.stride) * self.stride)
        if self.imgsz != int(imgsz):
            LOGGER.warning(f"{prefix}imgsz {imgsz} is not a multiple of stride {stride}: using {self.imgsz}")
        self.augment, self.hyp, self.prefix = bool(augment), _hyp(hyp), prefix
        self.names = _names_list(names)
        if json_file is not None:
            if images_dir is None:
                if not (isinstance(img_path, (str, Path)) and Path(img_path).is_dir()):
                    raise ValueError("json_file needs images_dir (or img_path as the image folder)")
                images_dir = img_path
            labels, json_names = load_coco_json(json_file, images_dir, names=self.names, cache_dir=cache_dir,
                                                prefix=prefix)
            self.names = self.names or json_names
        elif isinstance(img_path, (list, tuple)) and img_path and isinstance(img_path[0], dict):
            labels = list(img_path)
        else:
            files = list_images(img_path)
            if not files:
                raise ValueError(f"{prefix}no images found in {img_path}")
            labels = load_yolo_labels(files, self.names, cache_dir=cache_dir, prefix=prefix)
        self.labels = labels
        self.mosaic = self.augment and self.hyp["mosaic"] > 0
        self.rect = bool(rect) and not self.augment
        if rect and self.augment:
            LOGGER.warning(f"{prefix}rect=True is for evaluation only: ignored with augment=True")
        self.batch_shapes = None
        if self.rect:
            self._set_rect(batch_size, pad)
        self.ims = None  # decoded images resized to imgsz, when cached in RAM (loader workers share them)
        if cache_images:
            self.ims = [self.load_image(i) for i in range(len(self))]
            mb = sum(im.nbytes for im, _ in self.ims) / 2**20
            LOGGER.info(f"{prefix}cached {len(self.ims)} images in RAM ({mb:.0f} MB)")

    @property
    def im_files(self):
        return [lb["im_file"] for lb in self.labels]

    def __len__(self):
        return len(self.labels)

    def close_mosaic(self):
        """Switch mosaic off (the trainer calls this for the last ``close_mosaic`` epochs): samples are then
        letterboxed to imgsz before the random perspective, HSV and flips."""
        self.mosaic = False

    def _set_rect(self, batch_size, pad):
        shapes = np.array([lb["shape"] for lb in self.labels], dtype=np.float64)  # (h, w)
        ar = shapes[:, 0] / shapes[:, 1]
        order = ar.argsort(kind="stable")
        self.labels = [self.labels[i] for i in order]
        ar = ar[order]
        bi = np.arange(len(ar)) // batch_size
        self.batch_index = bi
        nb = int(bi[-1]) + 1
        shapes = np.ones((nb, 2))
        for b in range(nb):
            a = ar[bi == b]
            lo, hi = a.min(), a.max()
            if hi < 1:
                shapes[b] = [hi, 1]
            elif lo > 1:
                shapes[b] = [1, 1 / lo]
        self.batch_shapes = (np.ceil(shapes * self.imgsz / self.stride + pad).astype(int) * self.stride)

    # -- loading ----------------------------------------------------------------------------------------
    def load_image(self, i):
        """Original BGR image resized so that its long side is imgsz -> (img, (h0, w0))."""
        if self.ims is not None:
            im, ori = self.ims[i]
            return im.copy(), ori  # the augmentation works in place
        f = self.labels[i]["im_file"]
        im = cv2.imread(f)
        if im is None:
            raise FileNotFoundError(f"image {f} is no longer readable")
        h0, w0 = im.shape[:2]
        r = self.imgsz / max(h0, w0)
        if r != 1:
            w, h = min(max(round(w0 * r), 1), self.imgsz), min(max(round(h0 * r), 1), self.imgsz)
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            im = cv2.resize(im, (w, h), interpolation=interp)
        return im, (h0, w0)

    def _resized(self, i):
        """(img, pixel xyxy boxes, cls) of sample i resized to long side imgsz, and its (h0, w0)."""
        im, ori = self.load_image(i)
        lb = self.labels[i]
        h, w = im.shape[:2]
        boxes = xywh2xyxy(lb["bboxes"]).astype(np.float32)
        boxes[:, [0, 2]] *= w
        boxes[:, [1, 3]] *= h
        return im, boxes, lb["cls"].copy(), ori

    def __getitem__(self, i):
        hyp, s = self.hyp, self.imgsz
        im, boxes, cls, ori = self._resized(i)
        h1, w1 = im.shape[:2]
        if not self.augment:
            shape = tuple(self.batch_shapes[self.batch_index[i]]) if self.rect else (s, s)
            im, (ratio, pad) = letterbox(im, shape, auto=False, scaleup=False)
            boxes = scale_boxes(boxes, ratio, pad)
        else:
            if self.mosaic and random.random() < hyp["mosaic"]:
                idx = [i] + random.choices(range(len(self)), k=3)
                yc, xc = (int(random.uniform(s // 2, 2 * s - s // 2)) for _ in range(2))
                parts = [(im, boxes, cls)] + [self._resized(j)[:3] for j in idx[1:]]
                im, boxes, cls = mosaic4(parts, s, xc, yc)
                border = (-(s // 2), -(s // 2))
            else:
                im, (ratio, pad) = letterbox(im, (s, s), auto=False, scaleup=True)
                boxes = scale_boxes(boxes, ratio, pad)
                border = (0, 0)
            im, boxes, cls = random_perspective(im, boxes, cls, hyp["degrees"], hyp["translate"], hyp["scale"],
                                                hyp["shear"], hyp["perspective"], border=border)
            random_hsv(im, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"])
            if random.random() < hyp["flipud"]:
                im, boxes = flipud(im, boxes)
            if random.random() < hyp["fliplr"]:
                im, boxes = fliplr(im, boxes)
            ratio, pad = (1.0, 1.0), (0, 0)
        ratio = (ratio[0] * h1 / ori[0], ratio[1] * w1 / ori[1])  # original -> network image
        return self._format(im, boxes, cls, i, ori, ratio, pad)

    def _format(self, im, boxes, cls, i, ori, ratio, pad):
        h, w = im.shape[:2]
        boxes = clip_boxes(np.asarray(boxes, np.float32).reshape(-1, 4), w, h)
        xywh = xyxy2xywh(boxes)
        xywh[:, [0, 2]] /= w
        xywh[:, [1, 3]] /= h
        img = torch.from_numpy(np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1)))  # BGR HWC -> RGB CHW
        return {"img": img, "cls": torch.from_numpy(np.asarray(cls, np.float32).reshape(-1, 1)),
                "bboxes": torch.from_numpy(xywh.astype(np.float32)), "im_file": self.labels[i]["im_file"],
                "ori_shape": tuple(int(v) for v in ori),
                "ratio_pad": ((float(ratio[0]), float(ratio[1])), (float(pad[0]), float(pad[1])))}


def build_yolo_dataset(data, split, imgsz=640, augment=False, hyp=None, rect=False, batch_size=16, stride=32,
                       cache_dir=None, cache_images=False, prefix=""):
    """YOLODataset of ``data[split]`` for a dict from load_data_yaml (uses the COCO JSON when the split has one)."""
    kw = dict(imgsz=imgsz, augment=augment, hyp=hyp, rect=rect, batch_size=batch_size, stride=stride,
              names=data["names"], cache_dir=cache_dir, cache_images=cache_images, prefix=prefix)
    if data.get(f"{split}_json"):
        return YOLODataset(data[split], json_file=data[f"{split}_json"], images_dir=data[f"{split}_images"], **kw)
    return YOLODataset(data[split], **kw)


# ---------------------------------------------------------------------------------------------------------
# batching
def collate_fn(batch):
    """Samples -> {"img": uint8 (B, 3, H, W), "cls": (N, 1), "bboxes": (N, 4) normalised xywh,
    "batch_idx": float (N,), "im_file": list, "ori_shape": list, "ratio_pad": list}."""
    return {
        "img": torch.stack([b["img"] for b in batch], 0),
        "cls": torch.cat([b["cls"] for b in batch], 0),
        "bboxes": torch.cat([b["bboxes"] for b in batch], 0),
        "batch_idx": torch.cat([torch.full((len(b["cls"]),), float(i)) for i, b in enumerate(batch)], 0),
        "im_file": [b["im_file"] for b in batch],
        "ori_shape": [b["ori_shape"] for b in batch],
        "ratio_pad": [b["ratio_pad"] for b in batch],
    }


def seed_worker(worker_id):
    """Seed ``random`` and NumPy in each loader worker from torch's per-worker seed (deterministic given the
    loader's generator)."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def build_dataloader(dataset, batch=16, workers=0, shuffle=True, seed=0, rank=-1, world_size=1, drop_last=False,
                     pin_memory=None):
    """DataLoader with collate_fn, seeded shuffling and worker seeds; with world_size > 1 a DistributedSampler
    (call ``loader.sampler.set_epoch(epoch)`` each epoch). Workers are not persistent, so a dataset change
    such as close_mosaic() reaches them at the next epoch."""
    if getattr(dataset, "rect", False) and shuffle:
        LOGGER.warning("rect dataset: shuffle=False forced (batches are grouped by aspect ratio)")
        shuffle = False
    workers = max(0, min(int(workers), (os.cpu_count() or 1) // max(world_size, 1)))
    sampler = None
    if world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=max(rank, 0), shuffle=shuffle, seed=seed)
    g = torch.Generator()
    g.manual_seed(int(seed) + max(rank, 0))
    return DataLoader(dataset, batch_size=batch, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, collate_fn=collate_fn, worker_init_fn=seed_worker, generator=g,
                      pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                      drop_last=drop_last)
