"""`yolo`, ultralytics' command, on the fused kernels: patch_ultralytics() at class level in this process, then
ultralytics' own entrypoint with the remaining arguments, unchanged.

    python -m yolov10_kernels.integrations.yolo train model=yolov10n.yaml data=coco.yaml epochs=100
    yolov10-kernels-yolo train model=yolov10n.yaml data=coco.yaml      # the same, as a console script
    yolov10-kernels-yolo --backend reference --no-modules train ...   # the patch's own options come first

`yolo train` runs in a process that never called patch_ultralytics; this command is its way in. Multi-GPU DDP
(device=0,1) too: the patch makes ultralytics' generated worker script apply it in every rank first.
"""
import argparse
import sys

from ..backend import BACKENDS

PROG = "yolov10-kernels-yolo"


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog=PROG, description="ultralytics' `yolo` command with yolov10_kernels.patch_ultralytics() applied first",
        epilog=f"example: {PROG} train model=yolov10n.yaml data=coco8.yaml epochs=1")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="the drop-in modules' backend (auto: Triton on CUDA tensors, reference on the CPU)")
    p.add_argument("--no-modules", action="store_true", help="keep ultralytics' modules; patch the assigner only")
    p.add_argument("--no-assigner", action="store_true", help="keep ultralytics' assigner; swap the modules only")
    p.add_argument("yolo_args", nargs=argparse.REMAINDER, help="the arguments of `yolo`, e.g. train model=... data=...")
    return p.parse_args(argv)


def main(argv=None):
    """The command: patch, then `yolo <yolo_args>` in this process (sys.argv becomes ["yolo", *yolo_args], as
    ultralytics reads it)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from .ultralytics import fused_assigner_class, patch_ultralytics
    report = patch_ultralytics(modules=not args.no_modules, assigner=not args.no_assigner, backend=args.backend)
    print(f"{PROG}: {report}", file=sys.stderr, flush=True)
    from ultralytics import cfg

    # in place: ultralytics' modules hold this list as ARGV since their import (the one exception: an empty
    # sys.argv, for which cfg made its own)
    sys.argv[:] = ["yolo", *args.yolo_args]
    cfg.ARGV = sys.argv
    cfg.entrypoint()
    if "assigner" in report:
        print(f"{PROG}: the fused assigner ran {fused_assigner_class().calls} assignment(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
