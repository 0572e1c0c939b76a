"""Data pipeline: YOLO-format / COCO-JSON datasets, the official training augmentation, a synthetic dataset."""
from .augment import DEFAULT_HYP, letterbox

__all__ = ["DEFAULT_HYP", "letterbox"]
