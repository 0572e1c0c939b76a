"""Benchmark suite of yolov10-kernels: `python -m bench --help`. See bench/README.md."""
