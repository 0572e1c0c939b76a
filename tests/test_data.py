"""Data pipeline: dataset formats, label checks, cache, transforms keeping boxes exact, synthetic dataset."""
import json
import logging
import os
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from yolov10.boxes import xywh2xyxy
from yolov10.data import (YOLODataset, build_dataloader, build_yolo_dataset, collate_fn, letterbox, load_coco_json,
                          load_data_yaml)
from yolov10.data.augment import fliplr, flipud, mosaic4, random_hsv, random_perspective, scale_boxes
from yolov10.cli import main
from yolov10.data.labels import scan_labels
from yolov10.data.synth import CLASSES, make_synthetic_dataset

# 19 colours (BGR) with a 255 channel: a blend of one with the black background or the grey padding (114), as
# interpolation makes at edges, is never taken for another one
PALETTE = [(b, g, r) for b in (0, 128, 255) for g in (0, 128, 255) for r in (0, 128, 255) if max(b, g, r) == 255]
NO_AUG = {"hsv_h": 0, "hsv_s": 0, "hsv_v": 0, "fliplr": 0, "flipud": 0, "translate": 0, "scale": 0, "mosaic": 0}


def rect_image(rng, h, w, k, first_cls=0):
    """Black image with k non-overlapping solid rectangles of PALETTE colours -> (img, xyxy boxes, cls)."""
    img = np.zeros((h, w, 3), np.uint8)
    boxes, cls = [], []
    occupied = np.zeros((h, w), bool)
    for c in range(first_cls, first_cls + k):
        for _ in range(100):
            bw, bh = rng.integers(12, max(13, w // 3)), rng.integers(12, max(13, h // 3))
            x0, y0 = rng.integers(0, w - bw + 1), rng.integers(0, h - bh + 1)
            if not occupied[max(y0 - 3, 0):y0 + bh + 3, max(x0 - 3, 0):x0 + bw + 3].any():
                occupied[y0:y0 + bh, x0:x0 + bw] = True
                img[y0:y0 + bh, x0:x0 + bw] = PALETTE[c]
                boxes.append([x0, y0, x0 + bw, y0 + bh])
                cls.append(c)
                break
    return img, np.array(boxes, np.float32).reshape(-1, 4), np.array(cls, np.float32)


def assert_boxes_tight(img, boxes, cls, tol=1.5):
    """Every box tightly covers the pixels of its class's colour in img (BGR), within tol px (looked for in a
    window 3 px around the box: a mosaic may show one image twice)."""
    assert len(boxes) == len(cls)
    h, w = img.shape[:2]
    for b, c in zip(boxes, cls):
        x0, y0 = max(int(b[0]) - 3, 0), max(int(b[1]) - 3, 0)
        x1, y1 = min(int(np.ceil(b[2])) + 3, w), min(int(np.ceil(b[3])) + 3, h)
        m = np.abs(img[y0:y1, x0:x1].astype(int) - PALETTE[int(c)]).max(2) <= 30
        ys, xs = np.nonzero(m)
        assert len(xs), f"class {c}: colour not found for box {b}"
        got = np.array([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1], np.float32)
        assert np.abs(got - b).max() <= tol, f"class {c}: box {b} vs pixels {got}"


def write_yolo(root, split, items, names_n=None):
    """items: list of (name, img or bytes or None, label text or None) -> image paths."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    files = []
    for name, img, text in items:
        f = root / "images" / split / name
        if isinstance(img, bytes):
            f.write_bytes(img)
        else:
            cv2.imwrite(str(f), img)
        if text is not None:
            (root / "labels" / split / (f.stem + ".txt")).write_text(text)
        files.append(str(f))
    return files


def yolo_lines(boxes, cls, h, w):
    out = []
    for b, c in zip(boxes, cls):
        out.append(f"{int(c)} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} {(b[2] - b[0]) / w:.6f} "
                   f"{(b[3] - b[1]) / h:.6f}")
    return "\n".join(out) + "\n"


@pytest.fixture
def rect_dataset(tmp_path):
    """6 PNG images (some non-square) of coloured rectangles with exact YOLO labels; a colour = a class."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(6):
        h, w = [(128, 128), (96, 128), (128, 80), (64, 64)][i % 4]
        img, boxes, cls = rect_image(rng, h, w, 3, first_cls=3 * i)
        items.append((f"im{i}.png", img, yolo_lines(boxes, cls, h, w)))
    files = write_yolo(tmp_path, "train", items)
    names = [f"c{i}" for i in range(len(PALETTE))]
    return tmp_path, files, names


# ---------------------------------------------------------------------------------------------------------
# formats
def test_synth_yaml_dataset_loader(tmp_path):
    yaml_path = make_synthetic_dataset(tmp_path / "syn", n_train=12, n_val=6, imgsz=128, seed=1)
    data = load_data_yaml(yaml_path)
    assert data["names"] == CLASSES and data["nc"] == len(CLASSES)
    assert len(data["train"]) == 12 and len(data["val"]) == 6
    assert all(os.path.isabs(f) and os.path.isfile(f) for f in data["train"] + data["val"])

    ds = build_yolo_dataset(data, "val", imgsz=160, augment=False)
    s = ds[0]
    assert s["img"].dtype == torch.uint8 and s["img"].shape == (3, 160, 160)
    assert s["cls"].shape[1] == 1 and s["bboxes"].shape[1] == 4 and s["cls"].dtype == torch.float32
    # ratio_pad maps the network boxes back onto the label file's boxes in original pixels
    for i in range(len(ds)):
        s, lb = ds[i], ds.labels[i]
        (gh, gw), (pw, ph) = s["ratio_pad"]
        b = xywh2xyxy(s["bboxes"].numpy()) * 160
        b[:, [0, 2]] = (b[:, [0, 2]] - pw) / gw
        b[:, [1, 3]] = (b[:, [1, 3]] - ph) / gh
        h0, w0 = s["ori_shape"]
        ref = xywh2xyxy(lb["bboxes"]) * [w0, h0, w0, h0]
        np.testing.assert_allclose(b, ref, atol=1e-3)

    loader = build_dataloader(ds, batch=4, workers=0, shuffle=False)
    batch = next(iter(loader))
    assert batch["img"].shape == (4, 3, 160, 160) and batch["img"].dtype == torch.uint8
    n = sum(len(ds.labels[i]["cls"]) for i in range(4))
    assert batch["cls"].shape == (n, 1) and batch["bboxes"].shape == (n, 4) and batch["batch_idx"].shape == (n,)
    assert batch["batch_idx"].dtype == torch.float32 and len(batch["im_file"]) == 4
    assert len(batch["ori_shape"]) == 4 and len(batch["ratio_pad"]) == 4

    # rect eval batches: a per-batch shape, multiple of the stride, images of one batch alike
    rect = build_yolo_dataset(data, "val", imgsz=128, rect=True, batch_size=3)
    for b in build_dataloader(rect, batch=3, workers=0, shuffle=False):
        assert b["img"].shape[2] % 32 == 0 and b["img"].shape[3] % 32 == 0

    # distributed: a DistributedSampler per rank, disjoint halves
    train = build_yolo_dataset(data, "train", imgsz=128, augment=True)
    parts = []
    for rank in (0, 1):
        dl = build_dataloader(train, batch=2, workers=0, shuffle=True, seed=3, rank=rank, world_size=2)
        assert isinstance(dl.sampler, DistributedSampler)
        parts.append(set(dl.sampler))
    assert not parts[0] & parts[1] and len(parts[0] | parts[1]) == 12


def test_data_yaml_variants(tmp_path, rect_dataset):
    root, files, names = rect_dataset
    (root / "list.txt").write_text("".join(f"./images/train/{Path(f).name}\n" for f in files[:4]))
    (root / "d1.yaml").write_text("path: .\ntrain: list.txt\nval: [images/train/im4.png, images/train/im5.png]\n"
                                  f"names: {dict(enumerate(names))}\n")
    d = load_data_yaml(root / "d1.yaml")
    assert d["train"] == sorted(files[:4]) and d["val"] == sorted(files[4:6]) and d["names"] == names
    other = tmp_path / "cfg"
    other.mkdir()
    (other / "d2.yaml").write_text(f"path: {root}\ntrain: images/train\nnames: {names}\n")
    assert load_data_yaml(other / "d2.yaml")["train"] == sorted(files)
    (other / "d3.yaml").write_text(f"path: {root}\ntrain: images/nope\nnames: [a]\n")
    with pytest.raises(FileNotFoundError, match="images/nope"):
        load_data_yaml(other / "d3.yaml")


def test_coco_json(tmp_path):
    rng = np.random.default_rng(1)
    imgs_dir = tmp_path / "coco" / "images" / "val"
    imgs_dir.mkdir(parents=True)
    cat_ids = [3, 7, 11]  # non-contiguous ids -> classes 0, 1, 2
    images, anns, truth = [], [], {}
    for i in range(4):
        h, w = (100, 140) if i % 2 else (120, 120)
        img, boxes, cls = rect_image(rng, h, w, 3)
        cv2.imwrite(str(imgs_dir / f"{i}.png"), img)
        images.append({"id": 10 + i, "file_name": f"{i}.png", "width": w, "height": h})
        truth[str((imgs_dir / f"{i}.png").resolve())] = (boxes, cls % 3, h, w)
        for b, c in zip(boxes, cls):
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": cat_ids[int(c) % 3], "iscrowd": 0,
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    anns.append({"id": 999, "image_id": 10, "category_id": 3, "iscrowd": 1, "bbox": [0, 0, 50, 50]})  # ignored
    js = tmp_path / "coco" / "annotations" / "instances_val.json"
    js.parent.mkdir()
    js.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": k, "name": n} for k, n in zip(cat_ids, ["cat", "dog", "emu"])]}))

    labels, names = load_coco_json(js, imgs_dir)
    assert names == ["cat", "dog", "emu"] and len(labels) == 4
    for lb in labels:
        boxes, cls, h, w = truth[lb["im_file"]]
        assert lb["shape"] == (h, w)
        np.testing.assert_array_equal(lb["cls"], cls)
        np.testing.assert_allclose(xywh2xyxy(lb["bboxes"]) * [w, h, w, h], boxes, atol=1e-3)

    (tmp_path / "coco" / "data.yaml").write_text("val: images/val\nval_json: annotations/instances_val.json\n")
    data = load_data_yaml(tmp_path / "coco" / "data.yaml")
    assert data["names"] == names and len(data["val"]) == 4
    ds = build_yolo_dataset(data, "val", imgsz=128)
    assert sum(len(lb["cls"]) for lb in ds.labels) == sum(len(t[1]) for t in truth.values())
    # a YAML whose split is the JSON itself (images under images/<name>)
    (tmp_path / "coco" / "d2.yaml").write_text("val: annotations/instances_val.json\n")
    assert load_data_yaml(tmp_path / "coco" / "d2.yaml")["val_images"] == str(imgs_dir.resolve())


# ---------------------------------------------------------------------------------------------------------
# label checks and cache
def test_label_checks(tmp_path, caplog):
    img = np.full((64, 64, 3), 200, np.uint8)
    ok = "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n"
    items = [
        ("good.png", img, ok),
        ("empty_label.png", img, ""),
        ("no_label.png", img, None),
        ("out_of_range.png", img, "0 0.5 0.5 1.7 0.2\n"),
        ("negative.png", img, "1 -0.2 0.5 0.2 0.2\n"),
        ("columns.png", img, "0 0.5 0.5 0.2\n"),
        ("unknown_cls.png", img, "5 0.5 0.5 0.2 0.2\n"),
        ("corrupt.jpg", b"\xff\xd8\xff\xe0 not really a jpeg" * 3, ok),
        ("tolerated.png", img, "0 0.5 0.5 1.004 0.2\n0 0.5 0.5 1.004 0.2\n"),  # rounding + a duplicate
    ]
    write_yolo(tmp_path, "train", items)
    with caplog.at_level(logging.WARNING, logger="yolov10.data"):
        ds = YOLODataset(str(tmp_path / "images" / "train"), imgsz=64, names=["a", "b"])
    kept = {Path(f).stem for f in ds.im_files}
    assert kept == {"good", "empty_label", "no_label", "tolerated"}
    assert [len(ds.labels[i]["cls"]) for i in range(len(ds)) if "tolerated" in ds.im_files[i]] == [1]
    text = [r.getMessage() for r in caplog.records]
    for stem, problem in [("out_of_range", "> 1"), ("negative", "negative coordinate"), ("columns", "4 columns"),
                          ("unknown_cls", "class id 5 out of range"), ("corrupt", "corrupt or unreadable image")]:
        hits = [m for m in text if f"{stem}." in m]
        assert len(hits) == 1 and problem in hits[0], (stem, hits)
    summary = [m for m in text if m.startswith("skipped")]
    assert summary == ["skipped 5 of 9 images: 1 unreadable, 4 with bad labels (see the warnings above)"]
    assert any("duplicate" in m and "tolerated" in m for m in text)


def test_no_usable_image(tmp_path):
    write_yolo(tmp_path / "ds", "train", [("a.jpg", b"junk", "0 0.5 0.5 0.1 0.1\n"), ("b.png", b"", None)])
    with pytest.raises(ValueError, match=f"no usable image in {tmp_path / 'ds' / 'images' / 'train'}"):
        YOLODataset(str(tmp_path / "ds" / "images" / "train"), imgsz=64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"no images found in {tmp_path / 'empty'}"):
        YOLODataset(str(tmp_path / "empty"), imgsz=64)


def test_label_cache_reuse_and_rebuild(rect_dataset, monkeypatch):
    root, files, names = rect_dataset
    ds1 = YOLODataset(files, imgsz=128, names=names)
    assert not scan_labels.last_from_cache
    cache = root / "labels" / "train.yolov10.cache"
    assert cache.is_file()
    ds2 = YOLODataset(files, imgsz=128, names=names)
    assert scan_labels.last_from_cache
    for a, b in zip(ds1.labels, ds2.labels):
        assert a["im_file"] == b["im_file"] and a["shape"] == b["shape"]
        np.testing.assert_array_equal(a["cls"], b["cls"])
        np.testing.assert_array_equal(a["bboxes"], b["bboxes"])
    # a changed label file makes the cache stale
    lbl = root / "labels" / "train" / "im0.txt"
    lbl.write_text("1 0.5 0.5 0.25 0.25\n")
    ds3 = YOLODataset(files, imgsz=128, names=names)
    assert not scan_labels.last_from_cache
    i = ds3.im_files.index(files[0])
    np.testing.assert_array_equal(ds3.labels[i]["cls"], [1])
    YOLODataset(files, imgsz=128, names=names)
    assert scan_labels.last_from_cache
    # an unwritable label folder: the cache goes to the cache dir, and is found there next time
    import yolov10.data.labels as labels_mod

    def save(path, *a):
        if Path(path) == cache:
            raise PermissionError(path)
        return real_save(path, *a)
    real_save = labels_mod._save_cache
    cache.unlink()
    monkeypatch.setenv("YOLOV10_CACHE_DIR", str(root / "cachedir"))
    monkeypatch.setattr(labels_mod, "_save_cache", save)
    YOLODataset(files, imgsz=128, names=names)
    assert not scan_labels.last_from_cache and not cache.exists() and len(list((root / "cachedir").iterdir())) == 1
    YOLODataset(files, imgsz=128, names=names)
    assert scan_labels.last_from_cache


# ---------------------------------------------------------------------------------------------------------
# transforms keep boxes exact
def test_letterbox_and_flips():
    rng = np.random.default_rng(2)
    for (h, w), shape, auto in [((96, 160), (128, 128), False), ((150, 90), (128, 128), False),
                                ((96, 160), (128, 128), True), ((50, 70), (160, 96), False)]:
        img, boxes, cls = rect_image(rng, h, w, 4)
        out, (ratio, pad) = letterbox(img, shape, auto=auto)
        if auto:  # minimal padding to a multiple of the stride
            assert out.shape[0] % 32 == 0 and out.shape[1] % 32 == 0 and min(out.shape[:2]) < min(shape)
        else:
            assert out.shape[:2] == shape
        lb = scale_boxes(boxes, ratio, pad)
        assert_boxes_tight(out, lb, cls)
        assert (out[:pad[1]] == 114).all() and (out[:, :pad[0]] == 114).all()
        back = lb.copy()
        back[:, [0, 2]] = (back[:, [0, 2]] - pad[0]) / ratio[1]
        back[:, [1, 3]] = (back[:, [1, 3]] - pad[1]) / ratio[0]
        np.testing.assert_allclose(back, boxes, atol=1e-3)
    img, boxes, cls = rect_image(rng, 80, 120, 5)
    f, fb = fliplr(img, boxes)
    assert_boxes_tight(f, fb, cls, tol=0)
    f, fb = flipud(img, boxes)
    assert_boxes_tight(f, fb, cls, tol=0)
    hsv = random_hsv(img.copy(), 0.015, 0.7, 0.4)
    assert hsv.shape == img.shape and ((hsv.max(2) > 0) == (img.max(2) > 0)).all()  # objects stay in place


def test_random_perspective_and_mosaic():
    rng = np.random.default_rng(3)
    random.seed(0)
    for _ in range(10):
        img, boxes, cls = rect_image(rng, 128, 128, 6)
        out, b, c = random_perspective(img, boxes, cls, translate=0.1, scale=0.5)
        assert out.shape == img.shape
        assert_boxes_tight(out, b, c, tol=2)
    for _ in range(6):
        s = 96
        parts = [rect_image(rng, *hw, 4, first_cls=4 * k) for k, hw in enumerate([(96, 96), (64, 96), (96, 48), (80, 80)])]
        xc, yc = (int(random.uniform(s // 2, 2 * s - s // 2)) for _ in range(2))
        canvas, b, c = mosaic4(parts, s, xc, yc)
        assert canvas.shape == (2 * s, 2 * s, 3)
        assert_boxes_tight(canvas, b, c, tol=0)  # integer shifts, boxes clipped to the canvas
        out, b, c = random_perspective(canvas, b, c, translate=0.1, scale=0.5, border=(-s // 2, -s // 2))
        assert out.shape == (s, s, 3)
        assert_boxes_tight(out, b, c, tol=2)


def test_pipeline_boxes_determinism_close_mosaic(rect_dataset):
    root, files, names = rect_dataset
    ds = YOLODataset(files, imgsz=96, augment=True, hyp={"hsv_h": 0, "hsv_s": 0, "hsv_v": 0, "flipud": 0.5},
                     names=names)
    random.seed(0)
    nboxes = 0
    for _ in range(8):
        for i in range(len(ds)):
            s = ds[i]
            img = s["img"].permute(1, 2, 0).numpy()[..., ::-1]  # RGB CHW -> BGR HWC
            assert img.shape == (96, 96, 3)
            b = xywh2xyxy(s["bboxes"].numpy()) * 96
            assert_boxes_tight(img, b, s["cls"].numpy()[:, 0], tol=2)
            nboxes += len(b)
    assert nboxes > 100
    # deterministic given the seed
    random.seed(5)
    a = [ds[i] for i in range(4)]
    random.seed(5)
    b = [ds[i] for i in range(4)]
    for x, y in zip(a, b):
        assert torch.equal(x["img"], y["img"]) and torch.equal(x["bboxes"], y["bboxes"])
    # full default augmentation (HSV included) is deterministic too, and the same with images cached in RAM
    full = YOLODataset(files, imgsz=96, augment=True, names=names, hyp={"mosaic": 0.5})
    cached = YOLODataset(files, imgsz=96, augment=True, names=names, hyp={"mosaic": 0.5}, cache_images=True)
    for _ in range(2):  # a second pass: the cached images were not changed by the in-place augmentation
        random.seed(1)
        a = [full[i]["img"] for i in range(len(full))]
        random.seed(1)
        assert all(torch.equal(x, cached[i]["img"]) for i, x in enumerate(a))
    # close_mosaic: no mosaic any more; with no other augmentation a sample is the plain letterbox
    plain = YOLODataset(files, imgsz=128, augment=True, hyp={**NO_AUG, "mosaic": 1.0}, names=names)
    plain.close_mosaic()
    ev = YOLODataset(files, imgsz=128, augment=False, names=names)
    for i in range(len(plain)):
        assert torch.equal(plain[i]["img"], ev[i]["img"]) and torch.equal(plain[i]["bboxes"], ev[i]["bboxes"])
    batch = collate_fn([plain[0], plain[1]])
    assert batch["batch_idx"].tolist() == [0.0] * len(plain[0]["cls"]) + [1.0] * len(plain[1]["cls"])


# ---------------------------------------------------------------------------------------------------------
# synthetic dataset
def test_synth_deterministic_and_cli(tmp_path, capsys):
    a = make_synthetic_dataset(tmp_path / "a", n_train=10, n_val=4, imgsz=96, seed=7).parent
    assert main(["data", "synth", "--out", str(tmp_path / "b"), "--n-train", "10", "--n-val", "4", "--imgsz", "96",
                 "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert str((tmp_path / "b").resolve()) in out and "10 train images" in out and "4 val images" in out
    b = tmp_path / "b"
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert fa == fb and len(fa) == 2 * 14 + 1
    for p in fa:
        assert (a / p).read_bytes() == (b / p).read_bytes(), p
    c = make_synthetic_dataset(tmp_path / "c", n_train=10, n_val=4, imgsz=96, seed=8).parent
    assert (c / "images/train/000000.jpg").read_bytes() != (a / "images/train/000000.jpg").read_bytes()
    # labels are valid, within the image, and mostly of a learnable size
    ds = YOLODataset(str(a / "images" / "train"), imgsz=96, names=CLASSES)
    wh = np.concatenate([lb["bboxes"][:, 2:] * [lb["shape"][1], lb["shape"][0]] for lb in ds.labels])
    assert len(ds) == 10 and len(wh) > 10 and np.median(wh.min(1)) >= 96 * 0.06


def test_parity_with_ultralytics():
    """letterbox pixels and the random perspective's boxes (same `random` draws) match ultralytics 8.3."""
    import oracle
    aug = oracle.module("ultralytics.data.augment")
    Instances = oracle.module("ultralytics.utils.instance").Instances
    rng = np.random.default_rng(4)
    for h, w in [(100, 200), (37, 91), (333, 333), (120, 121)]:
        im = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        for shape, auto in [((128, 128), False), ((256, 192), False), ((128, 128), True)]:
            assert np.array_equal(aug.LetterBox(shape, auto=auto, stride=32)(image=im), letterbox(im, shape, auto=auto)[0])
    for t in range(8):
        im = rng.integers(0, 255, (192, 192, 3), dtype=np.uint8)
        xy = rng.uniform(0, 150, (8, 2))
        boxes = np.c_[xy, xy + rng.uniform(3, 60, (8, 2))].astype(np.float32)
        cls = np.arange(8, dtype=np.float32)
        border = (-48, -48) if t % 2 else (0, 0)
        labels = {"img": im.copy(), "cls": cls[:, None].copy(),
                  "instances": Instances(boxes.copy(), np.zeros((0, 1000, 2), np.float32), bbox_format="xyxy",
                                         normalized=False)}
        if t % 2:
            labels["mosaic_border"] = border
        rp = aug.RandomPerspective(degrees=0, translate=0.1, scale=0.5, shear=0, perspective=0)
        rp.border = border
        random.seed(t)
        ref = rp(labels)
        random.seed(t)
        out, b, c = random_perspective(im, boxes, cls, 0, 0.1, 0.5, 0, 0, border=border)
        assert out.shape == ref["img"].shape
        np.testing.assert_allclose(b, ref["instances"].bboxes, atol=1e-3)
        np.testing.assert_array_equal(c, ref["cls"][:, 0])
