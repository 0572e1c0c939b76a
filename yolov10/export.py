"""`yolov10 export`: the fused one-to-one model with the NMS-free top-k inside the graph, (B, 3, S, S) images in
[0, 1] -> (B, 300, 6) detections, as ONNX (opset 17, legacy TorchScript-based exporter: seconds instead of the
dynamo exporter's tens of seconds; fp16 through the dynamo exporter, opset 18), TorchScript or a torch.export program (.pt2). After writing,
the file is loaded back (ONNX in ONNX Runtime on the CPU) and its detections are compared with PyTorch's."""
import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import checkpoint_imgsz, load_checkpoint
from .onnx_runtime import ONNX_FORMAT, OnnxRunner, import_optional

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript", "pt2": ".pt2"}
OPSET = 17
SCORE_ATOL = 1e-4  # absolute, scores are in [0, 1]
BOX_ATOL = 1e-3  # fraction of the image size


class EndToEnd(nn.Module):
    """The model's eval forward without its Python input checks: the exported graph has a fixed image size,
    and those checks (int() of a tensor) cannot be traced or exported."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.head(self.model.features(x))


def _metadata(model, imgsz, dynamic):
    return {"format": ONNX_FORMAT, "names": json.dumps({str(k): v for k, v in model.names.items()}),
            "imgsz": str(imgsz), "nc": str(model.nc), "model": model.cfg_name, "dynamic_batch": str(bool(dynamic))}


def _write_onnx(net, x, path, dynamic, meta):
    onnx = import_optional("onnx")
    import_optional("onnxscript")  # torch.onnx imports it lazily; a clear message beats its ModuleNotFoundError
    # the legacy exporter cannot trace fp16 on the CPU ("tensor does not have a device"); the dynamo one can
    dynamo = x.dtype == torch.float16
    axes = {"dynamic_shapes": {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}} if dynamo else \
        {"dynamic_axes": {"images": {0: "batch"}, "output0": {0: "batch"}}}
    with warnings.catch_warnings():  # tracer and deprecation notes about the legacy exporter, not about the graph
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=dynamo, opset_version=18 if dynamo else OPSET,
                          input_names=["images"], output_names=["output0"], verbose=False,
                          **(axes if dynamic else {}))
    proto = onnx.load(str(path))
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))


def _write_torchscript(net, x, path, dynamic, meta):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(net, x, check_trace=False)  # sizes are recorded, so the batch stays dynamic
    torch.jit.save(traced, str(path), _extra_files={"config.json": json.dumps(meta)})


def _write_pt2(net, x, path, dynamic, meta):
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic else None
    program = torch.export.export(net, (x,), dynamic_shapes=shapes)
    torch.export.save(program, str(path), extra_files={"config.json": json.dumps(meta)})


_WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "pt2": _write_pt2}


def load_exported(path, format):
    """A callable on (B, 3, S, S) float32 arrays -> (B, K, 6) float32 tensor for an exported file."""
    if format == "onnx":
        return OnnxRunner(path)
    module = torch.jit.load(str(path)) if format == "torchscript" else torch.export.load(str(path)).module()
    return lambda x: module(torch.as_tensor(x)).float()


def detection_mismatches(out, ref, imgsz, score_atol=SCORE_ATOL, box_atol=BOX_ATOL):
    """Compare (B, K, 6) detections as sets where scores tie: the sorted scores agree within score_atol, and
    each detection of `out` has one in `ref` with the same class, score within score_atol and box within
    box_atol * imgsz, unless it ties with the last kept score (then the two top-k may keep different members
    of the tie). Floating-point differences between runtimes reorder near-equal scores, so comparing row by
    row reports box differences up to the image size between equivalent outputs. Returns problems, [] = equal."""
    if out.shape != ref.shape:
        return [f"output shape {tuple(out.shape)} != PyTorch's {tuple(ref.shape)}"]
    problems = []
    for b, (o, r) in enumerate(zip(out.float(), ref.float())):
        ds = (o[:, 4] - r[:, 4]).abs().max().item()
        if ds > score_atol:
            problems.append(f"image {b}: scores differ by up to {ds:.2e} (> {score_atol})")
        same = ((o[:, None, 5] == r[None, :, 5]) & ((o[:, None, 4] - r[None, :, 4]).abs() <= score_atol)
                & ((o[:, None, :4] - r[None, :, :4]).abs().amax(-1) <= box_atol * imgsz)).any(1)
        unmatched = ~same & (o[:, 4] > r[:, 4].min() + score_atol)
        if unmatched.any():
            i = int(unmatched.nonzero()[0])
            problems.append(f"image {b}: {int(unmatched.sum())} detections have no equal in PyTorch's output "
                            f"(first at rank {i}: {[round(v, 4) for v in o[i].tolist()]})")
    return problems


def check_export(path, format, model, imgsz, batches, score_atol=SCORE_ATOL):
    """Run the exported file and the PyTorch model on the same random images at each batch size; raise
    RuntimeError naming the differences, else return a one-line summary."""
    run = load_exported(path, format)
    g = torch.Generator().manual_seed(0)
    p = next(model.parameters())
    for b in batches:
        x = torch.rand(b, 3, imgsz, imgsz, generator=g).to(p.dtype)
        with torch.inference_mode():
            ref = model(x).float()
        problems = detection_mismatches(run(x.numpy()), ref, imgsz, score_atol)
        if problems:
            raise RuntimeError(f"{path}: the {format} export does not reproduce PyTorch at batch {b}: "
                               + "; ".join(problems))
    runtime = "ONNX Runtime (CPU)" if format == "onnx" else "PyTorch"
    return (f"checked {path} in {runtime}: detections equal to PyTorch's at batch {', '.join(map(str, batches))} "
            f"(scores within {score_atol}, boxes within {BOX_ATOL * imgsz:.3g} px, tied scores as sets)")


def export(weights, format="onnx", imgsz=None, dynamic=False, half=False, out=None, batch=1, check=True):
    """Export a checkpoint; returns the written path. imgsz defaults to the size the checkpoint was trained at.
    The check runs at batch 1 and 3 for a dynamic export, at `batch` for a static one."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}: expected one of {', '.join(FORMATS)}")
    imgsz = checkpoint_imgsz(weights) if imgsz is None else int(imgsz)
    if imgsz % 32:
        raise ValueError(f"--imgsz must be a multiple of 32, got {imgsz}")
    model = load_checkpoint(weights).fuse().eval()
    if half:
        model.half()
    out = Path(out) if out else Path(weights).with_suffix(FORMATS[format])
    out.parent.mkdir(parents=True, exist_ok=True)
    net = EndToEnd(model).eval()
    # an example batch of 1 would be specialised to a constant by torch.export's 0/1 rule
    x = torch.rand(max(batch, 2) if dynamic else batch, 3, imgsz, imgsz).to(next(model.parameters()).dtype)
    model.head._anchor_cache = None  # the cache must not keep tracer or fake tensors after the export
    try:
        _WRITERS[format](net, x, out, dynamic, _metadata(model, imgsz, dynamic))
    finally:
        model.head._anchor_cache = None
    print(f"exported {weights} -> {out} ({format}{f' opset {18 if half else OPSET}' if format == 'onnx' else ''}, imgsz {imgsz}, "
          f"batch {'dynamic' if dynamic else batch}{', fp16' if half else ''}, output (B, 300, 6))")
    if check:
        # fp16 rounds scores to about 1e-3: the check then tells real errors from rounding at that scale
        print(check_export(out, format, model, imgsz, (1, 3) if dynamic else (batch,),
                           score_atol=2e-3 if half else SCORE_ATOL))
    return out
