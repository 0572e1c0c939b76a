"""`yolov10` command line: info, predict, train, val, data."""
import argparse
import importlib
import sys

# subcommands implemented elsewhere take the remaining argv themselves
_DELEGATED = {
    "train": ("yolov10.trainer", "cli", "train a model (see `yolov10 train --help`)"),
    "val": ("yolov10.validator", "cli", "validate a checkpoint: COCO mAP (see `yolov10 val --help`)"),
    "data": ("yolov10.data.synth", "cli", "dataset tools: `yolov10 data synth --out DIR`"),
}


def _info(argv):
    p = argparse.ArgumentParser(prog="yolov10 info", description="Model summary: parameters and GFLOPs.")
    p.add_argument("--model", default="yolov10n", help="scale name (yolov10n ... yolov10x), YAML or checkpoint")
    p.add_argument("--nc", type=int, default=None, help="number of classes (default: the config's)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--fused", action="store_true", help="also report the fused, one-to-one-only model")
    a = p.parse_args(argv)
    from . import YOLOv10, load_checkpoint, model_info
    model = load_checkpoint(a.model) if a.model.endswith((".pt", ".pth")) else YOLOv10(a.model, nc=a.nc)
    model_info(model, a.imgsz, verbose=True)
    if a.fused:
        model_info(model.fuse(), a.imgsz, verbose=True)


def _predict(argv):
    p = argparse.ArgumentParser(prog="yolov10 predict", description="NMS-free detection on images.")
    p.add_argument("--weights", required=True, help="checkpoint (official YOLOv10, state_dict or ours)")
    p.add_argument("--source", required=True, help="an image file or a directory of images")
    p.add_argument("--out", default="runs/predict", help="directory for annotated images and detections.json")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--conf", type=float, default=0.25, help="score threshold for drawn/saved detections")
    p.add_argument("--device", default="cpu")
    p.add_argument("--kernels", default="reference", choices=("auto", "triton", "reference"))
    a = p.parse_args(argv)
    from .predict import predict
    predict(a.weights, a.source, a.out, imgsz=a.imgsz, conf=a.conf, device=a.device, kernels=a.kernels)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"info": (_info, "model summary (parameters, GFLOPs)"),
                "predict": (_predict, "detect objects in images, write annotated images + JSON")}
    if not argv or argv[0] in ("-h", "--help") or (argv[0] not in commands and argv[0] not in _DELEGATED):
        print("usage: yolov10 {" + ",".join([*commands, *_DELEGATED]) + "} ...\n")
        for name, (_, text) in commands.items():
            print(f"  {name:8s} {text}")
        for name, (_, _, text) in _DELEGATED.items():
            print(f"  {name:8s} {text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd in commands:
        return commands[cmd][0](rest) or 0
    module, func, _ = _DELEGATED[cmd]
    return getattr(importlib.import_module(module), func)(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
