"""Run a model exported by `yolov10 export --format onnx` in ONNX Runtime (CPU). onnxruntime is an optional
extra (`pip install -e .[export]`), imported only here and only when an ONNX model is run."""
import json
import os
from pathlib import Path

import numpy as np
import torch

# written into every export's metadata: an ONNX file without it is not one of ours
ONNX_FORMAT = "yolov10-kernels-onnx"


def import_optional(name):
    """Import one of the export extra's packages, or say how to install it."""
    try:
        return __import__(name)
    except ImportError as e:
        raise ImportError(f"{name} is needed for ONNX export and inference but cannot be imported ({e}); "
                          f"install the export extra: pip install --no-build-isolation -e '.[export]'") from e


class OnnxRunner:
    """(B, 3, H, W) float32 images in [0, 1] -> (B, 300, 6) float32 tensor, like the PyTorch model.
    Carries the export's class names and image size (`names`, `imgsz`). `spin`: whether ONNX Runtime's threads
    spin between runs (None: unless OMP_WAIT_POLICY=PASSIVE, the setting that stops PyTorch's from spinning). On
    a CPU shared with other work (other processes, or other runtimes timed in turn) spinning threads take the
    others' time slices (see yolov10/benchmark.py)."""

    def __init__(self, path, threads=None, spin=None):
        ort = import_optional("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if spin is None:
            spin = os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # protobuf parse errors, unsupported ops, ...: all mean "not a usable model"
            raise ValueError(f"{path} is not a loadable ONNX model ({type(e).__name__}: {e})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if meta.get("format") != ONNX_FORMAT or len(inputs) != 1 or len(outputs) != 1 \
                or len(outputs[0].shape) != 3 or outputs[0].shape[2] != 6:
            raise ValueError(f"{path} is not a YOLOv10 export of this package (expected metadata format="
                             f"{ONNX_FORMAT!r}, one image input and one (B, K, 6) output; found metadata "
                             f"{sorted(meta)}, inputs {[i.shape for i in inputs]}, outputs "
                             f"{[o.shape for o in outputs]}); export one with `yolov10 export --format onnx`")
        self.path, self.input = path, inputs[0]
        self.names = {int(k): v for k, v in json.loads(meta["names"]).items()}
        self.imgsz = int(meta["imgsz"])
        self.dtype = np.float16 if self.input.type == "tensor(float16)" else np.float32

    @property
    def batch(self):
        """The fixed batch size of a static export, None for a dynamic one."""
        b = self.input.shape[0]
        return b if isinstance(b, int) else None

    def __call__(self, x):
        x = np.ascontiguousarray(x, dtype=self.dtype)  # a channels_last tensor's array is strided
        if self.batch is not None and x.shape[0] != self.batch:
            raise ValueError(f"{self.path} was exported for batch {self.batch} (no --dynamic), got batch {x.shape[0]}")
        if tuple(x.shape[2:]) != (self.imgsz, self.imgsz):
            raise ValueError(f"{self.path} was exported at imgsz {self.imgsz}, got input {tuple(x.shape)}")
        return torch.from_numpy(self.session.run(None, {self.input.name: x})[0].astype(np.float32))
