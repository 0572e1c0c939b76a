"""Image-level inference: letterbox, NMS-free forward, boxes back to original pixels, drawing, JSON.
One pre/post-processing path for two runners: the PyTorch model (`TorchRunner`) and an exported ONNX model in
ONNX Runtime (`yolov10.onnx_runtime.OnnxRunner`); both map (B, 3, H, W) float32 arrays in [0, 1] to
(B, 300, 6) detections in network pixels."""
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from .checkpoint import checkpoint_imgsz, load_checkpoint
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


class TorchRunner:
    """A PyTorch detector as a runner. channels_last (default: on the CPU) runs the convolutions in NHWC,
    which oneDNN executes much faster than NCHW on the CPU; it converts the model's weights in place.
    compile=True (the package's fastest CPU path, see `yolov10 benchmark`) runs the model through
    torch.compile with inductor freezing: the weights become constants, so oneDNN prepacks them and fuses each
    conv with its SiLU, and inductor picks the convolutions' layout itself (channels_last then defaults to off);
    one graph per input shape (dynamic=False), compiled on the first call of each shape. A compiled runner is
    for inference only: later changes to the model's weights are not seen."""

    def __init__(self, model, channels_last=None, compile=False):
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        if channels_last is None:
            channels_last = p.device.type == "cpu" and not compile
        self.channels_last = channels_last
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = self.forward = model
        if compile:
            from .export import EndToEnd  # the forward without the input checks, which break the graph
            self.forward = torch.compile(EndToEnd(model), dynamic=False, options={"freezing": True})

    @torch.no_grad()  # not inference_mode: callers scale the boxes of the result in place
    def __call__(self, x):
        t = torch.as_tensor(x).to(self.device, self.dtype)
        if self.forward is not self.model:
            self.model._check_input(t)  # the compiled forward skips them
        if self.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return self.forward(t).float().cpu()


def preprocess(img_bgr, imgsz):
    """BGR uint8 image -> ((1, 3, imgsz, imgsz) float32 RGB array in [0, 1], letterbox (ratio, pad), its hw)."""
    from .data import letterbox
    lb, ratio_pad = letterbox(img_bgr, imgsz)
    x = np.ascontiguousarray(lb[..., ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255
    return x, ratio_pad, lb.shape[:2]


def detect(runner, img_bgr, imgsz=640):
    """One BGR uint8 image -> (N, 6) array of x1, y1, x2, y2, score, class in original pixels (all 300).
    `runner` is a TorchRunner / OnnxRunner, or a model (run as it is, NCHW)."""
    if isinstance(runner, torch.nn.Module):
        runner = TorchRunner(runner, channels_last=False)
    x, ratio_pad, lb_hw = preprocess(img_bgr, imgsz)
    pred = runner(x)[0].float()
    pred[:, :4] = scale_boxes(pred[:, :4], lb_hw, img_bgr.shape[:2], ratio_pad)
    return pred.numpy()


def load_runner(weights, imgsz=None, device="cpu", kernels="reference"):
    """(runner, class names, imgsz) for a checkpoint or an exported .onnx file. imgsz defaults to the size the
    checkpoint was trained at (an ONNX export's fixed size); an ONNX model only runs at its own size."""
    if str(weights).endswith(".onnx"):
        from .onnx_runtime import OnnxRunner
        runner = OnnxRunner(weights)
        if imgsz is not None and imgsz != runner.imgsz:
            raise ValueError(f"{weights} was exported at imgsz {runner.imgsz}; --imgsz {imgsz} needs a new export")
        return runner, runner.names, runner.imgsz
    imgsz = checkpoint_imgsz(weights) if imgsz is None else imgsz
    if imgsz % 32:
        raise ValueError(f"--imgsz must be a multiple of 32, got {imgsz}")
    model = load_checkpoint(weights).to(device).eval()
    if kernels != "reference":
        from .kernel_seam import accelerate
        accelerate(model, backend=kernels)
    return TorchRunner(model), model.names, imgsz


def _record(f, img, dets, names):
    return {"image": str(f), "width": img.shape[1], "height": img.shape[0], "detections": [
        {"box_xyxy": [round(float(v), 2) for v in d[:4]], "score": round(float(d[4]), 5),
         "class": int(d[5]), "name": names.get(int(d[5]), str(int(d[5])))} for d in dets]}


def predict(weights, source, out_dir, imgsz=None, conf=0.25, device="cpu", kernels="reference"):
    """Detect in every image of `source`; write annotated copies and detections.json to `out_dir`. An image
    that cannot be read is reported (stderr and an "error" entry in the JSON) and the others are processed;
    a ValueError only when no image could be read."""
    if imgsz is not None and imgsz % 32:
        raise ValueError(f"--imgsz must be a multiple of 32, got {imgsz}")
    files = list_images(source)
    runner, names, imgsz = load_runner(weights, imgsz, device, kernels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, failed = [], []
    for f in files:
        img = cv2.imread(str(f))
        if img is None:
            failed.append(f"cannot read image {f} (corrupt or unsupported format)")
            print(f"{f.name}: skipped: {failed[-1]}", file=sys.stderr)
            results.append({"image": str(f), "error": failed[-1]})
            continue
        dets = detect(runner, img, imgsz)
        dets = dets[dets[:, 4] > conf]
        cv2.imwrite(str(out_dir / f.name), draw_detections(img, dets, names))
        results.append(_record(f, img, dets, names))
        print(f"{f.name}: {len(dets)} detections -> {out_dir / f.name}")
    if len(failed) == len(files):
        raise ValueError("; ".join(failed))
    (out_dir / "detections.json").write_text(json.dumps(results, indent=1))
    print(f"annotated images and detections.json written to {out_dir.resolve()}"
          + (f"; {len(failed)} of {len(files)} images could not be read" if failed else ""))
    return results
