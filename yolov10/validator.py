"""Validation: COCO mAP50-95 / mAP50 of the one-to-one head, computed by pycocotools' COCOeval.

The model runs in eval mode, where it returns (B, 300, 6) detections (x1, y1, x2, y2 in input pixels,
score, class) from the one-to-one head's two-stage top-k, no NMS. As in THU-MIG's validator all 300 are
kept (no score threshold unless --conf is given). Boxes are mapped back to the original image through the
letterbox's ratio_pad; the ground truth is the dataset's own labels (normalised xywh, mapped the same way),
turned into a COCO dict in memory. Writes predictions.json (COCO results format) when a save_dir is given.

CLI: `yolov10 val --weights CKPT [--data data.yaml] [--imgsz 640] [--batch 32] [--device cpu] [--conf]`.
"""
import contextlib
import io
import json
import math
import sys
import time
from pathlib import Path

import torch

from .boxes import xywh2xyxy
from .utils import cpu_memory_format, select_device

__all__ = ["Validator", "coco_evaluate", "scale_boxes", "fitness", "print_table", "build_val_loader", "validate"]


def fitness(metrics):
    """Model fitness used to pick best.pt (ultralytics' weights: 0.1 mAP50 + 0.9 mAP50-95)."""
    return 0.1 * metrics["map50"] + 0.9 * metrics["map50_95"]


def scale_boxes(boxes, img_hw, ori_hw, ratio_pad=None):
    """xyxy boxes in the letterboxed input (img_hw) -> original image pixels (ori_hw), clipped.
    ratio_pad = ((gain_h, gain_w), (pad_left, pad_top)) as the dataset records it per sample (original ->
    network: x' = x * gain_w + pad_left); None = a centred letterbox inferred from the shapes."""
    boxes = boxes.clone().float() if isinstance(boxes, torch.Tensor) else torch.as_tensor(boxes, dtype=torch.float32)
    if ratio_pad is None:
        gain = min(img_hw[0] / ori_hw[0], img_hw[1] / ori_hw[1])
        pad = ((img_hw[1] - ori_hw[1] * gain) / 2, (img_hw[0] - ori_hw[0] * gain) / 2)
        gain_w = gain_h = gain
    else:
        (gain_h, gain_w), pad = _ratio(ratio_pad[0]), ratio_pad[1]
    boxes[..., [0, 2]] = (boxes[..., [0, 2]] - float(pad[0])) / float(gain_w)
    boxes[..., [1, 3]] = (boxes[..., [1, 3]] - float(pad[1])) / float(gain_h)
    boxes[..., [0, 2]] = boxes[..., [0, 2]].clamp(0, float(ori_hw[1]))
    boxes[..., [1, 3]] = boxes[..., [1, 3]].clamp(0, float(ori_hw[0]))
    return boxes


def _ratio(r):
    if isinstance(r, (int, float)):
        return float(r), float(r)
    r = [float(x) for x in (r.tolist() if hasattr(r, "tolist") else r)]
    return (r[0], r[0]) if len(r) == 1 else (r[0], r[1])


# ---------------------------------------------------------------------------------------------------------
def coco_evaluate(images, annotations, detections, nc, verbose=False):
    """COCO evaluation with pycocotools.

    images: [{"id", "width", "height", ...}]; annotations: ground truth [{"image_id", "category_id", "bbox":
    [x, y, w, h]}] (pixels); detections: [{"image_id", "category_id", "bbox", "score"}]; category ids are
    class indices 0..nc-1. Returns {"map50_95", "map50", "per_class": {c: {"ap50_95", "ap50", "instances",
    "images"}}} where classes without ground truth have NaN APs. No ground truth or no detections -> 0.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    per_class = {c: {"ap50_95": math.nan, "ap50": math.nan, "instances": 0, "images": 0} for c in range(nc)}
    imgs_with = {c: set() for c in range(nc)}
    for a in annotations:
        per_class[int(a["category_id"])]["instances"] += 1
        imgs_with[int(a["category_id"])].add(a["image_id"])
    for c in range(nc):
        per_class[c]["images"] = len(imgs_with[c])
        if per_class[c]["instances"]:
            per_class[c]["ap50_95"] = per_class[c]["ap50"] = 0.0
    out = {"map50_95": 0.0, "map50": 0.0, "per_class": per_class}
    if not annotations or not detections:
        return out

    gt_anns = []
    for i, a in enumerate(annotations):
        x, y, w, h = (float(v) for v in a["bbox"])
        gt_anns.append({"id": i + 1, "image_id": a["image_id"], "category_id": int(a["category_id"]),
                        "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    gt = {"images": [dict(im) for im in images], "annotations": gt_anns,
          "categories": [{"id": c, "name": str(c)} for c in range(nc)]}
    dets = [{"image_id": d["image_id"], "category_id": int(d["category_id"]),
             "bbox": [float(v) for v in d["bbox"]], "score": float(d["score"])} for d in detections]
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print("\n".join(line for line in log.getvalue().splitlines() if line.lstrip().startswith("Average")))
    out["map50_95"] = max(float(ev.stats[0]), 0.0)
    out["map50"] = max(float(ev.stats[1]), 0.0)
    precision = ev.eval["precision"]  # (T iou thresholds, R recall points, K classes, A areas, M maxDets)
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]  # area "all", maxDets 100
        if per_class[cat]["instances"]:
            valid = p[p > -1]
            per_class[cat]["ap50_95"] = float(valid.mean()) if valid.size else 0.0
            p50 = p[0][p[0] > -1]
            per_class[cat]["ap50"] = float(p50.mean()) if p50.size else 0.0
    return out


def print_table(metrics, names, n_images, file=None):
    """Per-class table: images, instances, mAP50, mAP50-95."""
    file = file or sys.stdout
    pc = metrics["per_class"]
    width = max([len("class")] + [len(str(names.get(c, c))) for c in pc]) + 2
    print(f"{'class':>{width}} {'images':>8} {'instances':>10} {'mAP50':>8} {'mAP50-95':>9}", file=file)
    total = sum(v["instances"] for v in pc.values())
    print(f"{'all':>{width}} {n_images:>8} {total:>10} {metrics['map50']:>8.4f} {metrics['map50_95']:>9.4f}",
          file=file)
    for c, v in pc.items():
        if v["instances"]:
            print(f"{str(names.get(c, c)):>{width}} {v['images']:>8} {v['instances']:>10} {v['ap50']:>8.4f} "
                  f"{v['ap50_95']:>9.4f}", file=file)


# ---------------------------------------------------------------------------------------------------------
class Validator:
    """Runs a model over a validation dataloader and scores it with COCOeval.

    dataloader: yields the data pipeline's batches {"img" uint8 (B, 3, H, W), "cls", "bboxes" (normalised
    xywh of the letterboxed image), "batch_idx", "im_file", "ori_shape", "ratio_pad"}.
    """

    def __init__(self, dataloader, names, device="cpu", save_dir=None, conf=None, max_det=300, verbose=True,
                 progress=True):
        self.dataloader, self.device = dataloader, torch.device(device)
        self.names = dict(names) if not isinstance(names, (list, tuple)) else dict(enumerate(names))
        self.nc = len(self.names)
        self.save_dir = Path(save_dir) if save_dir else None
        self.conf, self.max_det, self.verbose, self.progress = conf, max_det, verbose, progress
        self.speed_ms = None

    def collect(self, model):
        """Run the model; returns (images, ground-truth annotations, detections) in original-image pixels. On
        the CPU the model's 4-D weights are moved to channels_last in place (same values; faster there)."""
        images, gts, dets = [], [], []
        was_training = model.training
        model.eval()
        batches = self.dataloader
        if self.progress:
            from tqdm import tqdm
            batches = tqdm(batches, desc="val", leave=False, dynamic_ncols=True, file=sys.stdout)
        t_model, n = 0.0, 0
        try:
            with torch.inference_mode():
                for batch in batches:
                    img = batch["img"].to(self.device, non_blocking=True).float() / 255
                    img = cpu_memory_format(model, img)  # channels_last on the CPU, model included
                    t0 = time.perf_counter()
                    out = model(img)
                    if isinstance(out, (tuple, list)):
                        out = out[0]
                    out = out.float().cpu()
                    t_model += time.perf_counter() - t0
                    n += img.shape[0]
                    self._add_batch(batch, out, img.shape[2:], images, gts, dets)
        finally:
            model.train(was_training)
        self.speed_ms = 1000 * t_model / max(n, 1)
        return images, gts, dets

    def _add_batch(self, batch, out, hw, images, gts, dets):
        h, w = int(hw[0]), int(hw[1])
        batch_idx = torch.as_tensor(batch["batch_idx"]).view(-1)
        cls_all = torch.as_tensor(batch["cls"]).view(-1)
        boxes_all = torch.as_tensor(batch["bboxes"]).view(-1, 4).float()
        for si in range(out.shape[0]):
            image_id = len(images)
            ori = [int(v) for v in (batch["ori_shape"][si] if "ori_shape" in batch else (h, w))]
            rp = batch["ratio_pad"][si] if "ratio_pad" in batch else None
            im_file = str(batch["im_file"][si]) if "im_file" in batch else str(image_id)
            images.append({"id": image_id, "height": ori[0], "width": ori[1], "file_name": im_file})
            sel = batch_idx == si
            if sel.any():
                gxyxy = xywh2xyxy(boxes_all[sel]) * torch.tensor([w, h, w, h], dtype=torch.float32)
                gxyxy = scale_boxes(gxyxy, (h, w), ori, rp)
                for c, b in zip(cls_all[sel].tolist(), gxyxy.tolist()):
                    gts.append({"image_id": image_id, "category_id": int(c),
                                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
            pred = out[si]
            if self.conf is not None:
                pred = pred[pred[:, 4] > self.conf]
            pred = pred[: self.max_det]
            if len(pred):
                pb = scale_boxes(pred[:, :4], (h, w), ori, rp)
                for b, s, c in zip(pb.tolist(), pred[:, 4].tolist(), pred[:, 5].tolist()):
                    dets.append({"image_id": image_id, "category_id": int(c),
                                 "bbox": [round(b[0], 3), round(b[1], 3), round(b[2] - b[0], 3), round(b[3] - b[1], 3)],
                                 "score": round(s, 5)})

    def __call__(self, model):
        t0 = time.time()
        images, gts, dets = self.collect(model)
        metrics = coco_evaluate(images, gts, dets, self.nc)
        metrics["images"], metrics["instances"] = len(images), len(gts)
        metrics["speed_ms"] = self.speed_ms
        metrics["time"] = time.time() - t0
        if self.save_dir:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            files = {im["id"]: Path(im["file_name"]).name for im in images}
            with open(self.save_dir / "predictions.json", "w") as f:
                json.dump([{**d, "file_name": files[d["image_id"]]} for d in dets], f)
        if self.verbose:
            print_table(metrics, self.names, len(images))
        return metrics


# ---------------------------------------------------------------------------------------------------------
def build_val_loader(data, imgsz, batch, workers, split="val", rect=True):
    """Validation dataloader over data[split]: letterbox only (no augmentation), rectangular batches (as the
    official validator; rect=False: imgsz x imgsz), no shuffling."""
    from .data import build_dataloader, build_yolo_dataset
    if split not in data:
        raise ValueError(f"{data.get('yaml_file', 'the data YAML')} has no {split!r} split")
    dataset = build_yolo_dataset(data, split, imgsz=imgsz, augment=False, rect=rect, batch_size=batch, stride=32,
                                 prefix=f"{split}: ")
    return build_dataloader(dataset, batch, workers, shuffle=False)


def validate(weights, data=None, imgsz=None, batch=32, device="", workers=2, conf=None, out=None, split="val",
             verbose=True, runner=None):
    """Validate a checkpoint on a dataset ('data' = data.yaml path or None for the synthetic dataset).
    runner: an nn.Module run instead of the checkpoint's model, e.g. a compiled or exported form of it
    (`yolov10.benchmark.StaticBatches`), on imgsz x imgsz batches (such forms have a fixed input size; the
    mAP then differs slightly from the rect batches'); the checkpoint still gives the classes and settings."""
    from .checkpoint import _read, checkpoint_imgsz, load_checkpoint
    from .data.resolve import resolve_data
    dev = select_device(device)
    model = load_checkpoint(weights).to(dev)
    ck = _read(weights, "cpu")
    train_args = ck.get("args") if isinstance(ck, dict) and isinstance(ck.get("args"), dict) else {}
    del ck
    if imgsz is None:
        imgsz = checkpoint_imgsz(weights)
    data_cfg = resolve_data(data if data is not None else train_args.get("data"))
    if data_cfg["nc"] != model.nc:
        raise ValueError(f"{weights} has nc={model.nc} classes but {data_cfg['yaml']} has nc={data_cfg['nc']}")
    loader = build_val_loader(data_cfg, imgsz, batch, workers, split=split, rect=runner is None)
    print(f"validating {weights} ({model.cfg_name}, nc={model.nc}) on {data_cfg['yaml']} [{split}] at imgsz "
          f"{imgsz}, device {dev}")
    v = Validator(loader, data_cfg["names"], dev, save_dir=out, conf=conf, verbose=verbose)
    m = v(model if runner is None else runner)
    print(f"mAP50-95 {m['map50_95']:.4f}  mAP50 {m['map50']:.4f}  ({m['images']} images, {m['instances']} "
          f"instances, {m['speed_ms']:.1f} ms/image inference, {m['time']:.1f} s total)")
    if out:
        print(f"predictions written to {Path(out) / 'predictions.json'}")
    return m
