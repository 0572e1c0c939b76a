"""Pure-PyTorch YOLOv10 (reference implementation with parity to the official model)."""
from .model import YOLOv10
from .checkpoint import load_checkpoint, save_checkpoint
from .info import model_info

__all__ = ["YOLOv10", "load_checkpoint", "save_checkpoint", "model_info"]
__version__ = "0.1.0"
