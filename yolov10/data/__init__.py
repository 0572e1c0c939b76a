"""Data pipeline: YOLO-format / COCO-JSON datasets, the official training augmentation, a synthetic dataset."""
from ..defaults import AUGMENT_DEFAULTS as DEFAULT_HYP
from .augment import letterbox
from .coco import load_coco_json
from .dataset import YOLODataset, build_dataloader, build_yolo_dataset, collate_fn, list_images, load_data_yaml
from .labels import img2label_paths

__all__ = ["DEFAULT_HYP", "letterbox", "YOLODataset", "build_dataloader", "build_yolo_dataset", "collate_fn",
           "img2label_paths", "list_images", "load_data_yaml", "load_coco_json"]
