"""`yolov10` command line (console script `yolov10`, or `python -m yolov10`): every argument parser of the package.

A command is a function ``_<name>(argv) -> exit code`` that parses the arguments after its name, plus one line of
COMMANDS (name -> function, one-line help). The work is imported inside the command, so `yolov10 --help` and a
bad flag answer quickly.
"""
import argparse
import sys

from .defaults import DEFAULTS, OFFICIAL, SYNTH_DATASET, SYNTH_PRESET
from .kernel_seam import CHOICES as KERNEL_CHOICES, DISPATCH_CHOICES


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
    p.add_argument("--weights", required=True, help="checkpoint (official YOLOv10, state_dict or ours), or a "
                   ".onnx file of `yolov10 export` (run in ONNX Runtime)")
    p.add_argument("--source", required=True, help="an image file or a directory of images")
    p.add_argument("--out", default="runs/predict", help="directory for annotated images and detections.json")
    p.add_argument("--imgsz", type=int, default=None, help="default: the checkpoint's training size, else 640")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold for drawn/saved detections")
    p.add_argument("--device", default="cpu")
    p.add_argument("--kernels", default="reference", choices=KERNEL_CHOICES)
    a = p.parse_args(argv)
    from .predict import predict
    results = predict(a.weights, a.source, a.out, imgsz=a.imgsz, conf=a.conf, device=a.device, kernels=a.kernels)
    return 1 if any("error" in r for r in results) else 0


def _export(argv):
    from .export import FORMATS
    p = argparse.ArgumentParser(prog="yolov10 export", description="Export the fused one-to-one model with the "
                                "NMS-free top-k in the graph ((B, 300, 6) output), then check it against PyTorch.")
    p.add_argument("--weights", required=True, help="checkpoint (official YOLOv10, state_dict or ours)")
    p.add_argument("--format", default="onnx", help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--imgsz", type=int, default=None, help="default: the checkpoint's training size, else 640")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch dimension")
    p.add_argument("--half", action="store_true", help="fp16 weights and inputs")
    p.add_argument("--batch", type=int, default=1, help="batch size of a static (not --dynamic) export")
    p.add_argument("--out", default=None, help="output file (default: the weights' path with the format's suffix)")
    a = p.parse_args(argv)
    from .export import export
    export(a.weights, a.format, a.imgsz, a.dynamic, a.half, a.out, a.batch)
    return 0


def _benchmark(argv):
    from .benchmark import ROWS
    p = argparse.ArgumentParser(prog="yolov10 benchmark", description="Latency and throughput of eager NCHW, "
                                "eager channels_last, accelerate, torch.compile, ONNX Runtime and the package's "
                                "best CPU path, side by side, timed round-robin; per-row mAP50-95 with --weights "
                                "and --data. On a CPU shared with other processes run it (and deploy) with "
                                "OMP_WAIT_POLICY=PASSIVE: PyTorch's spinning OpenMP threads lose most of their time "
                                "there.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="scale name (random weights)")
    g.add_argument("--weights", help="checkpoint")
    p.add_argument("--imgsz", type=int, default=None, help="default: the checkpoint's training size, else 640")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--data", default=None, help="data YAML: also report each row's mAP50-95 on its val split")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of: " + ", ".join(ROWS))
    p.add_argument("--iters", type=int, default=20, help="timed rounds; each calls every row once, in turn")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per row first (compile, caches)")
    p.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime CPU threads")
    p.add_argument("--out", default="runs/benchmark", help="directory for the JSON and markdown table")
    a = p.parse_args(argv)
    import torch
    from .benchmark import benchmark
    if a.threads:
        torch.set_num_threads(a.threads)
    benchmark(a.model, a.weights, a.imgsz, a.batch, a.device, a.data, [r.strip() for r in a.rows.split(",")],
              warmup=a.warmup, iters=a.iters, out=a.out)
    return 0


def _rank(argv):
    p = argparse.ArgumentParser(prog="yolov10 rank", description="Intrinsic numerical rank of the last conv of "
                                "each stage (rank-guided block design): table, bar chart, CIB order.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="scale name (random weights)")
    g.add_argument("--weights", help="checkpoint")
    p.add_argument("--threshold", type=float, default=0.5, help="count singular values above this x the largest")
    p.add_argument("--out", default="runs/rank", help="directory for rank.png, rank.md, rank.json")
    a = p.parse_args(argv)
    from . import YOLOv10, load_checkpoint
    from .rank import rank_report
    model = load_checkpoint(a.weights) if a.weights else YOLOv10(a.model)
    rank_report(model, a.out, a.weights or a.model, a.threshold)
    return 0


def _bool(s):
    if isinstance(s, bool):
        return s
    if str(s).lower() in ("1", "true", "yes", "on"):
        return True
    if str(s).lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


def _train_parser():
    p = argparse.ArgumentParser(
        prog="yolov10 train",
        description="Train YOLOv10 (official ultralytics/THU-MIG mechanics). Without --data the embedded synthetic "
                    f"dataset is generated and used with CPU-sized defaults {SYNTH_PRESET}; with --data the official "
                    f"defaults {OFFICIAL} apply. Multi-GPU: torchrun --nproc_per_node N -m yolov10 train ...",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    D = DEFAULTS
    p.add_argument("--model", default=D["model"], help="yolov10n/s/m/b/l/x or a model YAML")
    p.add_argument("--data", default=None, help="data YAML (path/train/val/names); default: the synthetic dataset")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: official 100 / synthetic 5)")
    p.add_argument("--batch", type=int, default=None, help="global batch size (default: 16)")
    p.add_argument("--imgsz", type=int, default=None, help="train/val image size (default: official 640 / synthetic 256)")
    p.add_argument("--device", default=D["device"], help="cpu, 0, cuda:0 (default: cuda if available, else cpu)")
    p.add_argument("--workers", type=int, default=None, help="dataloader workers per process (default: official 8 / synthetic 0)")
    p.add_argument("--kernels", default=D["kernels"], choices=KERNEL_CHOICES,
                   help="reference = pure PyTorch; auto = the fused modules (backend auto) + fused assigner when "
                        "available; triton = the fused modules forced to Triton + fused assigner")
    p.add_argument("--dispatch", default=None, choices=DISPATCH_CHOICES,
                   help="with --kernels auto on CUDA: fused = the fused modules' kernels; reference = their reference "
                        "forward; measure = time both per module, shape, dtype and mode at the run's shapes (on a copy; "
                        "cached per GPU) and keep the faster, logging the table (default: $YOLOV10_KERNELS_DISPATCH, "
                        "else fused)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from a last.pt (or its run directory); no value = the newest runs/**/last.pt")
    p.add_argument("--out", default=None, help="run directory (default: runs/train, runs/train2, ...)")
    p.add_argument("--exist-ok", action="store_true", help="reuse runs/train instead of incrementing")
    p.add_argument("--seed", type=int, default=D["seed"])
    p.add_argument("--deterministic", type=_bool, default=D["deterministic"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--optimizer", default=None, help="auto, SGD, AdamW, Adam, NAdam, RAdam, Adamax, RMSProp "
                   "(default: official auto / synthetic AdamW)")
    p.add_argument("--lr0", type=float, default=None, help="initial LR (default: official 0.01 / synthetic 0.003)")
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum / Adam beta1 (default: official "
                   "0.937 / synthetic 0.9)")
    p.add_argument("--warmup-bias-lr", dest="warmup_bias_lr", type=float, default=None,
                   help="bias LR at the start of warm-up (default: official 0.1 / synthetic 0)")
    p.add_argument("--warmup-epochs", dest="warmup_epochs", type=float, default=None,
                   help="warm-up epochs (default: official 3 / synthetic 1)")
    for k in ("lrf", "weight_decay", "warmup_momentum",
              "box", "cls", "dfl", "hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear",
              "perspective", "flipud", "fliplr", "mosaic"):
        p.add_argument(f"--{k.replace('_', '-')}", dest=k, type=float, default=D[k])
    p.add_argument("--nbs", type=int, default=None,
                   help="nominal batch size (gradient accumulation target; default: official 64 / synthetic 16)")
    p.add_argument("--cos-lr", dest="cos_lr", action="store_true", help="cosine instead of linear LR decay")
    p.add_argument("--close-mosaic", dest="close_mosaic", type=int, default=None,
                   help="turn mosaic off for the last N epochs (default: official 10 / synthetic 2)")
    p.add_argument("--amp", type=_bool, default=D["amp"],
                   help="mixed precision: fp16 + GradScaler on CUDA, bf16 autocast of the model on CPUs with native bf16")
    p.add_argument("--val", type=_bool, default=D["val"], help="validate (see --val-epochs)")
    p.add_argument("--val-epochs", dest="val_epochs", type=int, default=None,
                   help="validate in the last N epochs only, 0 = every epoch (default: official 0 / synthetic 3)")
    p.add_argument("--max-nan", dest="max_nan", type=int, default=D["max_nan"],
                   help="stop after this many non-finite losses in a row")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="letterbox only (tests/debugging)")
    p.add_argument("--no-shuffle", dest="shuffle", action="store_false", help="fixed sample order (tests/debugging)")
    p.add_argument("--max-steps", dest="max_steps", type=int, default=None, help="stop each epoch after N batches")
    return p


def _train(argv):
    from .trainer import Trainer
    from .utils import dist_env
    args = vars(_train_parser().parse_args(argv))
    if args["resume"]:  # a resumed run takes its settings from the checkpoint
        args = {k: args[k] for k in ("resume", "device", "workers", "threads")}
    m = Trainer(args).train()
    return 0 if m is not None or dist_env()[0] > 0 else 1


def _val(argv):
    p = argparse.ArgumentParser(prog="yolov10 val", description="COCO mAP50-95 / mAP50 of a checkpoint "
                                "(pycocotools), one-to-one head, top-300 detections per image.")
    p.add_argument("--weights", required=True, help="checkpoint (last.pt / best.pt of `yolov10 train`, or official)")
    p.add_argument("--data", default=None, help="data YAML (default: the data the checkpoint was trained on, "
                   "else the embedded synthetic dataset)")
    p.add_argument("--split", default="val", help="data YAML key of the split to evaluate (default val)")
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the training imgsz, else 640)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="", help="cpu, 0, cuda:1 ... (default: cuda:0 if available, else cpu)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--conf", type=float, default=None, help="drop detections scoring <= conf (default: keep all 300)")
    p.add_argument("--out", default="runs/val", help="directory for predictions.json")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    a = p.parse_args(argv)
    import torch
    from .validator import validate
    if a.threads:
        torch.set_num_threads(a.threads)
    m = validate(a.weights, a.data, a.imgsz, a.batch, a.device, a.workers, a.conf, a.out, a.split)
    return 0 if m is not None else 1


def _data(argv):
    p = argparse.ArgumentParser(prog="yolov10 data", description="dataset tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="write the synthetic shapes dataset (YOLO format + data.yaml)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--n-train", type=int, default=SYNTH_DATASET["n_train"])
    s.add_argument("--n-val", type=int, default=SYNTH_DATASET["n_val"])
    s.add_argument("--imgsz", type=int, default=SYNTH_DATASET["imgsz"], help="long side of the images in pixels")
    s.add_argument("--seed", type=int, default=SYNTH_DATASET["seed"])
    s.add_argument("--overwrite", action="store_true", help="regenerate even if the same dataset is there")
    a = p.parse_args(argv)
    from .data.synth import write_synthetic_dataset
    write_synthetic_dataset(a.out, a.n_train, a.n_val, a.imgsz, a.seed, a.overwrite)
    return 0


COMMANDS = {
    "info": (_info, "model summary (parameters, GFLOPs)"),
    "predict": (_predict, "detect objects in images, write annotated images + JSON"),
    "train": (_train, "train a model (see `yolov10 train --help`)"),
    "val": (_val, "validate a checkpoint: COCO mAP (see `yolov10 val --help`)"),
    "data": (_data, "dataset tools: `yolov10 data synth --out DIR`"),
    "export": (_export, "export to ONNX / TorchScript / pt2 with the NMS-free post-process, checked"),
    "benchmark": (_benchmark, "latency of eager, channels_last, accelerate, compile, ONNX Runtime, best CPU path"),
    "rank": (_rank, "numerical rank of each stage's last conv (rank-guided CIB design)"),
}


def _usage():
    print("usage: yolov10 {" + ",".join(COMMANDS) + "} ...\n")
    for name, (_, text) in COMMANDS.items():
        print(f"  {name:9s} {text}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        _usage()
        return 0
    if argv[0] not in COMMANDS:
        _usage()
        print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]][0](argv[1:]) or 0


# what a user can get wrong (a path, a format, a size): one line naming it instead of a traceback
USER_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, ValueError)


def run(argv=None):
    """The console entry point: main(), with bad input reported in one line and exit code 2."""
    try:
        return main(argv)
    except USER_ERRORS as e:
        print(f"yolov10: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
