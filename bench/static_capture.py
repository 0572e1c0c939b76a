"""The static report's capture: the launches of one op's drop-in (bench.ops) at a target shape, found by running
its real launchers on fake CUDA tensors (the machinery, `fake_gpu`, `Recorder`, `Launch`, lives in
yolov10_kernels/capture.py, which yolov10_kernels.warmup() shares). Nothing is compiled here;
bench/static_compile.py compiles what was recorded. Run it in a process without TRITON_INTERPRET (the launchers
read it at import)."""
import torch

from yolov10_kernels.capture import Recorder, capture, patched  # noqa: F401  (Recorder: for bench/static.py)


def capture_op(recorder, op, scale, batch, dtype, train, channels_last=True, imgsz=640, gpu="H200"):
    """Record the launches of the op's drop-in (bench.ops) at batch `batch` and image size `imgsz` (pixels, or
    (height, width)): eval forward (BN folded), or train forward + backward, as they are on `gpu` (a
    yolov10_kernels.gpus profile or name: its SM count sizes the grids, its limits the configs)."""
    from . import ops
    module, _, in_shapes = ops.op_module(op, scale)
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    in_shapes = [(*s[:2], s[2] * h // 640, s[3] * w // 640) for s in in_shapes]  # op_module's shapes: at 640 px
    module.train(train)
    with patched(torch.cuda, "is_available", lambda: True):
        ours = ops.make_ours(op, module, "cuda", "train_full" if train else "infer")
    recorder.context = f"{op} yolov10{scale} b{batch} {str(dtype)[6:]} {'train' if train else 'eval'}"
    capture(ours, [(batch,) + tuple(s[1:]) for s in in_shapes], dtype, train, channels_last, gpu=gpu,
            recorder=recorder)
