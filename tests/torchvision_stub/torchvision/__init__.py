"""A stand-in for torchvision where the installed wheel cannot be imported (a CUDA build beside the CPU torch,
shared/research/environment.md): `from ultralytics import YOLO` (8.3: SAM 3) and the validator (8.4) import
torchvision. tests/test_ultralytics_patch.py puts this folder first on the path only where the real import
fails: NMS runs through ultralytics' own torch NMS, every other use raises."""
from . import ops  # noqa: F401

__version__ = "0.28.0"
