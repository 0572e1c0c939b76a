"""torchvision.ops of the stub: nms only (ultralytics' TorchNMS, same results)."""
from . import roi_align  # noqa: F401


def nms(boxes, scores, iou_threshold):
    from ultralytics.utils.nms import TorchNMS
    return TorchNMS.nms(boxes, scores, iou_threshold)
