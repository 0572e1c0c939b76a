"""Image-level inference: letterbox, NMS-free forward, boxes back to original pixels, drawing, JSON."""
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from .checkpoint import load_checkpoint
from .validator import scale_boxes

IMG_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(source):
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMG_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMG_SUFFIXES)}) in directory {source}")
        return files
    if source.is_file():
        return [source]
    raise FileNotFoundError(f"source {source} does not exist")


def draw_detections(img, dets, names):
    out = img.copy()
    for x1, y1, x2, y2, score, cls in dets:
        c = int(cls)
        color = tuple(int(v) for v in np.random.default_rng(c).integers(64, 256, 3))
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), color, 2)
        cv2.putText(out, f"{names.get(c, c)} {score:.2f}", (int(x1), max(int(y1) - 4, 10)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    return out


@torch.no_grad()
def detect(model, img_bgr, imgsz=640):
    """One BGR uint8 image -> (N, 6) array of x1, y1, x2, y2, score, class in original pixels (all 300)."""
    from .data import letterbox
    lb, (ratio, pad) = letterbox(img_bgr, imgsz)
    p = next(model.parameters())
    x = torch.from_numpy(np.ascontiguousarray(lb[..., ::-1].transpose(2, 0, 1))).to(p.device)
    x = (x.float() / 255).unsqueeze(0).to(p.dtype)
    pred = model(x)[0].float().cpu()
    pred[:, :4] = scale_boxes(pred[:, :4], lb.shape[:2], img_bgr.shape[:2], (ratio, pad))
    return pred.numpy()


def predict(weights, source, out_dir, imgsz=640, conf=0.25, device="cpu", kernels="reference"):
    if imgsz % 32:
        raise ValueError(f"--imgsz must be a multiple of 32, got {imgsz}")
    model = load_checkpoint(weights).to(device).eval()
    if kernels != "reference":
        from yolov10_kernels import accelerate
        accelerate(model, backend=kernels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for f in list_images(source):
        img = cv2.imread(str(f))
        if img is None:
            raise ValueError(f"cannot read image {f} (corrupt or unsupported format)")
        dets = detect(model, img, imgsz)
        dets = dets[dets[:, 4] > conf]
        cv2.imwrite(str(out_dir / f.name), draw_detections(img, dets, model.names))
        results.append({"image": str(f), "width": img.shape[1], "height": img.shape[0], "detections": [
            {"box_xyxy": [round(float(v), 2) for v in d[:4]], "score": round(float(d[4]), 5),
             "class": int(d[5]), "name": model.names.get(int(d[5]), str(int(d[5])))} for d in dets]})
        print(f"{f.name}: {len(dets)} detections -> {out_dir / f.name}")
    (out_dir / "detections.json").write_text(json.dumps(results, indent=1))
    print(f"annotated images and detections.json written to {out_dir.resolve()}")
    return results
