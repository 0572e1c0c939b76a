"""Validator: COCO mAP through pycocotools on known predictions, box mapping back through the letterbox, and the
end-to-end Validator loop (all 300 detections kept, predictions.json written)."""
import json
import math

import numpy as np
import pytest
import torch

from yolov10.validator import Validator, coco_evaluate, print_table, scale_boxes


def _toy_gt(seed=0, n_images=4, nc=3):
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n_images):
        w, h = 200 + 20 * i, 160 + 10 * i
        images.append({"id": i, "width": w, "height": h, "file_name": f"im{i}.jpg"})
        for _ in range(3 + i):
            bw, bh = rng.uniform(15, 60), rng.uniform(15, 60)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            anns.append({"image_id": i, "category_id": int(rng.integers(nc)), "bbox": [x, y, bw, bh]})
    return images, anns


def _as_dets(anns, score=0.9):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": score}
            for a in anns]


def test_ground_truth_as_predictions_gives_map_one():
    images, anns = _toy_gt()
    m = coco_evaluate(images, anns, _as_dets(anns), nc=3)
    assert m["map50_95"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    for c, v in m["per_class"].items():
        if v["instances"]:
            assert v["ap50_95"] == pytest.approx(1.0) and v["ap50"] == pytest.approx(1.0)
    assert sum(v["instances"] for v in m["per_class"].values()) == len(anns)


def test_shifted_boxes_score_lower():
    images, anns = _toy_gt()
    dets = _as_dets(anns)
    for d in dets[::2]:  # shift every other box by 30% of its width: IoU ~0.54 -> fails the high thresholds
        d["bbox"][0] += 0.3 * d["bbox"][2]
    m = coco_evaluate(images, anns, dets, nc=3)
    assert m["map50"] == pytest.approx(1.0)
    assert 0.3 < m["map50_95"] < 0.9
    # a wrong class is a miss and a false positive
    dets = _as_dets(anns)
    dets[0]["category_id"] = (dets[0]["category_id"] + 1) % 3
    assert coco_evaluate(images, anns, dets, nc=3)["map50_95"] < 1.0


def test_extra_low_score_detections_do_not_hurt_and_empty_predictions_give_zero():
    images, anns = _toy_gt()
    dets = _as_dets(anns)
    # low-score junk after every true positive (as the top-300 output has) leaves AP at 1
    dets += [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": [0, 0, 3, 3], "score": 0.01}
             for a in anns]
    assert coco_evaluate(images, anns, dets, nc=3)["map50_95"] == pytest.approx(1.0)
    m = coco_evaluate(images, anns, [], nc=3)
    assert m["map50_95"] == 0.0 and m["map50"] == 0.0
    # detections that all miss
    miss = [{**d, "bbox": [0, 0, 2, 2]} for d in _as_dets(anns)]
    assert coco_evaluate(images, anns, miss, nc=3)["map50_95"] == 0.0
    # no ground truth at all
    assert coco_evaluate(images, [], _as_dets(anns), nc=3)["map50_95"] == 0.0


def test_per_class_table_marks_classes_without_ground_truth(capsys):
    images, anns = _toy_gt(nc=2)
    m = coco_evaluate(images, anns, _as_dets(anns), nc=4)
    assert math.isnan(m["per_class"][3]["ap50_95"]) and m["per_class"][3]["instances"] == 0
    print_table(m, {0: "circle", 1: "square", 2: "tri", 3: "star"}, len(images))
    out = capsys.readouterr().out
    assert "circle" in out and "star" not in out and "all" in out


def test_scale_boxes_inverts_the_letterbox():
    from yolov10.data import letterbox
    img = np.zeros((150, 301, 3), np.uint8)  # wide image -> vertical padding; rw != rh
    lb, (ratio, pad) = letterbox(img, 256)
    assert lb.shape[:2] == (256, 256)
    box = torch.tensor([[30.0, 20.0, 120.0, 140.0]])
    in_lb = box.clone()
    in_lb[:, [0, 2]] = in_lb[:, [0, 2]] * ratio[0] + pad[0]
    in_lb[:, [1, 3]] = in_lb[:, [1, 3]] * ratio[1] + pad[1]
    rp = ((ratio[1], ratio[0]), pad)  # the dataset's ratio_pad: ((gain_h, gain_w), (left, top))
    back = scale_boxes(in_lb, (256, 256), (150, 301), rp)
    assert torch.allclose(back, box, atol=1e-4)
    back2 = scale_boxes(in_lb, (256, 256), (150, 301), None)  # centred letterbox inferred from the shapes
    assert torch.allclose(back2, box, atol=0.6)
    clipped = scale_boxes(torch.tensor([[-10.0, -10.0, 400.0, 400.0]]), (256, 256), (150, 301), rp)
    assert clipped.tolist() == [[0.0, 0.0, 301.0, 150.0]]


class _OracleModel(torch.nn.Module):
    """Eval-mode stand-in: returns the queued (B, 300, 6) outputs in order."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = list(outputs)
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.outputs.pop(0)


def _fake_batches(nc=2, perfect=True, shift=0.0):
    """Two letterboxed batches of 2 images each with known labels, and (B, 300, 6) model outputs that contain the
    ground truth (score 0.9) followed by low-score junk rows, all in input pixels."""
    rng = np.random.default_rng(1)
    batches, outputs = [], []
    for b in range(2):
        h = w = 128
        boxes, cls, idx, ori, rp, files = [], [], [], [], [], []
        out = torch.zeros(2, 300, 6)
        out[:, :, :4] = torch.tensor([1.0, 1.0, 3.0, 3.0])
        out[:, :, 4] = 0.001
        for si in range(2):
            oh, ow = 96 + 32 * si, 192
            r = min(h / oh, w / ow)
            nw, nh = round(ow * r), round(oh * r)
            pad = ((w - nw) // 2, (h - nh) // 2)
            ori.append((oh, ow))
            rp.append(((nh / oh, nw / ow), pad))
            files.append(f"b{b}_{si}.jpg")
            for k in range(3):
                cx, cy = rng.uniform(30, 98), rng.uniform(40, 88)
                bw, bh = rng.uniform(10, 30), rng.uniform(10, 30)
                boxes.append([cx / w, cy / h, bw / w, bh / h])
                c = int(rng.integers(nc))
                cls.append([c])
                idx.append(si)
                dx = shift * bw
                out[si, k] = torch.tensor([cx - bw / 2 + dx, cy - bh / 2, cx + bw / 2 + dx, cy + bh / 2, 0.9, c])
        batches.append({"img": torch.zeros(2, 3, h, w, dtype=torch.uint8), "cls": torch.tensor(cls, dtype=torch.float32),
                        "bboxes": torch.tensor(boxes, dtype=torch.float32), "batch_idx": torch.tensor(idx, dtype=torch.float32),
                        "im_file": files, "ori_shape": ori, "ratio_pad": rp})
        outputs.append(out)
    return batches, outputs


def test_validator_end_to_end_with_oracle_predictions(tmp_path):
    batches, outputs = _fake_batches()
    v = Validator(batches, {0: "a", 1: "b"}, "cpu", save_dir=tmp_path, verbose=True, progress=False)
    m = v(_OracleModel(outputs))
    assert m["map50_95"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    assert m["images"] == 4 and m["instances"] == 12
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert len(preds) == 4 * 300  # no score threshold: all 300 detections per image are kept
    assert {p["file_name"] for p in preds} == {"b0_0.jpg", "b0_1.jpg", "b1_0.jpg", "b1_1.jpg"}
    # boxes are in original-image pixels
    first = [p for p in preds if p["image_id"] == 1 and p["score"] > 0.5]
    assert all(0 <= p["bbox"][0] <= 192 and 0 <= p["bbox"][1] <= 128 for p in first)

    batches, outputs = _fake_batches(shift=0.3)
    m2 = Validator(batches, {0: "a", 1: "b"}, "cpu", verbose=False, progress=False)(_OracleModel(outputs))
    assert m2["map50_95"] < 0.9

    batches, outputs = _fake_batches()
    m3 = Validator(batches, {0: "a", 1: "b"}, "cpu", conf=0.5, verbose=False, progress=False)(_OracleModel(outputs))
    assert m3["map50_95"] == pytest.approx(1.0)


def test_validator_runs_a_real_model():
    from yolov10 import YOLOv10
    model = YOLOv10("yolov10n", nc=2)
    batches, _ = _fake_batches()
    m = Validator(batches, {0: "a", 1: "b"}, "cpu", verbose=False, progress=False)(model)
    assert 0.0 <= m["map50_95"] <= 1.0 and m["images"] == 4
    assert model.training  # the validator restores the mode it found
