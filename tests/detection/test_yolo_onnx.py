"""The yolo-onnx engine on small models whose outputs are known: letterbox, decoding of both
layouts, class-aware NMS, boxes mapped back to the photo, labels from the model's metadata."""

import numpy as np
import pytest
from PIL import Image

from detection.base import ArtifactInvalid, DetectorSpec, DetectorUnavailable
from detection.weights import WeightsMismatch, sha256_file
from detection.yolo_onnx import (
    YoloOnnxDetector,
    labels_from_names,
    layout_of,
    letterbox,
    nms,
    parse_names,
    scale_boxes,
    to_tensor,
)
from tests import yolo_models

# A white 100 x 50 photo in a 64 x 64 input: scale 0.64, 64 x 32, 16 px of grey above and below.
PHOTO = Image.new("RGB", (100, 50), (255, 255, 255))
INPUT_MEAN = 0.5 + 0.5 * 114 / 255
EXPECTED = [
    # label, x1, y1, x2, y2, confidence: the input boxes minus (0, 16), divided by 0.64
    ("person", 22 / 0.64, 6 / 0.64, 42 / 0.64, 26 / 0.64, 0.9),
    ("dog", 44 / 0.64, 0.0, 52 / 0.64, 8 / 0.64, INPUT_MEAN),  # y1 -0.5 clamped to 0
    ("traffic_light", 23 / 0.64, 7 / 0.64, 41 / 0.64, 25 / 0.64, 0.7),
]


def _detector(tmp_path, data: bytes, settings: dict | None = None, **kwargs) -> YoloOnnxDetector:
    path = yolo_models.write(tmp_path / "model.onnx", data)
    spec = DetectorSpec(
        id="tiny@1.0.0", label="tiny@1.0.0", implementation="yolo-onnx", settings=settings or {}, weights={"model.onnx": sha256_file(path)}
    )
    return YoloOnnxDetector(spec=spec, model_path=path, **kwargs)


def _as_rows(detections):
    return [(d.label, d.x1, d.y1, d.x2, d.y2, d.confidence) for d in detections]


def _assert_expected(detections):
    got = _as_rows(detections)
    assert [row[0] for row in got] == [row[0] for row in EXPECTED]
    for g, e in zip(got, EXPECTED):
        assert g[1:] == pytest.approx(e[1:], abs=1e-4)


def test_letterbox_as_ultralytics():
    """Scale by the smaller ratio, round, centre, pad with 114."""
    array = np.full((50, 100, 3), 255, dtype=np.uint8)
    padded, scale, (left, top) = letterbox(array, (64, 64))
    assert padded.shape == (64, 64, 3) and scale == 0.64 and (left, top) == (0, 16)
    assert (padded[:16] == 114).all() and (padded[48:] == 114).all() and (padded[16:48] == 255).all()
    # An odd padding puts the extra pixel after: 64 x 45 -> 19 px to share: 9 above, 10 below.
    padded, _, (left, top) = letterbox(np.zeros((45, 64, 3), dtype=np.uint8), (64, 64))
    assert top == 9 and (padded[:9] == 114).all() and (padded[9:54] == 0).all() and (padded[54:] == 114).all()
    tensor = to_tensor(padded)
    assert tensor.shape == (1, 3, 64, 64) and tensor.dtype == np.float32 and tensor.max() == pytest.approx(114 / 255)


def test_scale_boxes_undoes_the_letterbox_and_clamps():
    """Input pixels -> photo pixels; outside the photo is clamped to its edge."""
    boxes = np.array([[22.0, 22.0, 42.0, 42.0], [-5.0, 10.0, 70.0, 60.0]])
    out = scale_boxes(boxes, input_size=(64, 64), image_size=(100, 50))
    assert out[0] == pytest.approx([34.375, 9.375, 65.625, 40.625])
    assert out[1] == pytest.approx([0.0, 0.0, 100.0, 50.0])


def test_nms_keeps_the_best_of_overlapping_boxes():
    """IoU above the threshold suppresses; at or below it both stay."""
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]], dtype=np.float32)
    scores = np.array([0.5, 0.9, 0.8, 0.7], dtype=np.float32)
    assert nms(boxes, scores, 0.45).tolist() == [1, 2, 3]
    assert nms(boxes, scores, 0.5).tolist() == [1, 2, 3]  # box 3 vs box 1: IoU 36/114 = 0.32
    assert nms(boxes, scores, 0.3).tolist() == [1, 2]


def test_v8_layout(tmp_path):
    """A YOLOv8/11 export ([1, 4+nc, N]): threshold, class-aware NMS, boxes on the photo, labels."""
    detector = _detector(tmp_path, yolo_models.tiny_v8())
    assert detector.layout == "v8" and detector.input_wh == (64, 64)
    assert detector.classes == ["person", "traffic_light", "dog"]
    _assert_expected(detector.detect(PHOTO))


def test_v5_layout(tmp_path):
    """A YOLOv5 export ([1, N, 5+nc]): scores are objectness times class score."""
    detector = _detector(tmp_path, yolo_models.tiny_v5())
    assert detector.layout == "v5"
    _assert_expected(detector.detect(PHOTO))


def test_settings_min_confidence_and_iou(tmp_path):
    """min_confidence drops the weaker; iou 0.9 keeps the overlapping person."""
    detector = _detector(tmp_path, yolo_models.tiny_v8(), {"min_confidence": 0.75, "iou": 0.9})
    assert [(d.label, round(d.confidence, 2)) for d in detector.detect(PHOTO)] == [("person", 0.9), ("person", 0.8)]


def test_classes_from_settings_win_over_metadata(tmp_path):
    """The classes a version records are the labels it returns."""
    detector = _detector(tmp_path, yolo_models.tiny_v8(), {"classes": ["a", "b", "c"]})
    assert [d.label for d in detector.detect(PHOTO)] == ["a", "c", "b"]


def test_dynamic_input_takes_the_settings_size(tmp_path):
    """An export with a dynamic input runs at the version's input_size."""
    detector = _detector(tmp_path, yolo_models.tiny_v8(dynamic=True), {"input_size": [64, 64]})
    assert detector.input_wh == (64, 64)
    _assert_expected(detector.detect(PHOTO))


def test_checksum_checked_before_loading(tmp_path):
    """A file whose sha256 is not the registered one is refused before OpenVINO reads it."""
    path = yolo_models.write(tmp_path / "model.onnx", yolo_models.tiny_v8())
    spec = DetectorSpec(id="tiny@1.0.0", label="tiny@1.0.0", implementation="yolo-onnx", settings={}, weights={"model.onnx": "0" * 64})
    with pytest.raises(WeightsMismatch):
        YoloOnnxDetector(spec=spec, model_path=path)


def test_cuda_is_refused_clearly(tmp_path):
    """No CUDA path without ONNX Runtime's GPU build: said, not silently run elsewhere."""
    with pytest.raises(DetectorUnavailable, match="CPU only"):
        _detector(tmp_path, yolo_models.tiny_v8(), device="cuda")


def test_bytes_that_are_not_a_model_are_invalid(tmp_path):
    """OpenVINO's refusal becomes ArtifactInvalid (a named job error), not a crash."""
    with pytest.raises(ArtifactInvalid):
        _detector(tmp_path, b"not a model at all" * 10, {"classes": ["a"], "layout": "v8"})


def test_names_are_parsed_as_literals_and_mapped():
    """Ultralytics' names: a dict literal, never evaluated; names become label names."""
    assert parse_names("{0: 'person', 1: 'traffic light', 2: 'Fire-Hydrant'}") == ["person", "traffic light", "Fire-Hydrant"]
    with pytest.raises(ValueError):
        parse_names("__import__('os').system('true')")
    with pytest.raises(ValueError):
        parse_names("{0: 'a', 2: 'b'}")
    labels, mapping = labels_from_names(["person", "traffic light", "Fire-Hydrant", "3d", "!!"])
    assert labels == ["person", "traffic_light", "fire_hydrant", "c_3d", "class_4"]
    assert mapping == {"traffic light": "traffic_light", "Fire-Hydrant": "fire_hydrant", "3d": "c_3d", "!!": "class_4"}
    with pytest.raises(ValueError, match="both become"):
        labels_from_names(["traffic light", "traffic-light"])


def test_layout_of_shapes():
    """By the class count when known, else by the short side."""
    assert layout_of((1, 84, 8400), 80) == "v8"
    assert layout_of((1, 25200, 85), 80) == "v5"
    assert layout_of((1, 84, 8400), None) == "v8"
    assert layout_of((1, 25200, 85), None) == "v5"
    with pytest.raises(ArtifactInvalid):
        layout_of((1, 84, 8400), 3)
