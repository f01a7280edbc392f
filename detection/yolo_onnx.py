"""Ultralytics-format ONNX detectors (a team's own trained YOLO), behind the Detector interface.

The two export layouts in use are read:
  - "v5": YOLOv5's ``[1, N, 5 + nc]``: per candidate cx, cy, w, h, objectness, then nc class scores;
  - "v8": YOLOv8 / YOLO11's ``[1, 4 + nc, N]``: per candidate cx, cy, w, h, then nc class scores.
Boxes are in pixels of the network input. The steps follow Ultralytics (8.3) exactly, so that the
boxes equal theirs for the same file:
  - ``letterbox``: ultralytics.data.augment.LetterBox(auto=False) for a fixed-size export: scale
    by min(new_h / h, new_w / w), resize (bilinear) to the rounded size, pad with grey 114, the
    image centred; then RGB, / 255, CHW float32;
  - ``decode`` + ``nms``: ultralytics.utils.ops.non_max_suppression: a candidate's score is its
    best class score (times the objectness for v5), kept when above ``min_confidence``;
    class-aware NMS at ``iou`` (boxes of different classes never suppress each other), at most
    ``max_det`` kept;
  - ``scale_boxes``: the padding taken off and the scale undone, clamped to the photo.

The model runs on OpenVINO's CPU plugin, which reads ONNX directly; precision is pinned to the
version's (detection/precision.py). The file is the version's one weight: the registry hands the
engine a local copy whose sha256 it has checked (``artifact_source``), never a path a user gave.

Labels: the class names come from the version's settings (``classes``, recorded at registration
from the model's own ``names`` metadata or the manifest), mapped to the label pattern by
``label_from_name``.
"""

import ast
import logging
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import ArtifactInvalid, Detection, Detector, DetectorSpec
from .boxes import nms_arrays
from .labels import LABEL_MAX_LENGTH, label_valid
from .openvino_cpu import compiled_precision_check, cpu_compile_config
from .weights import WeightsMismatch, sha256_file

logger = logging.getLogger(__name__)

LAYOUTS = ("v5", "v8")
PAD_VALUE = 114  # Ultralytics' letterbox grey
# Ultralytics offsets each class's boxes by class * MAX_WH before one NMS, so that boxes of two
# classes never overlap: class-aware NMS in one pass.
MAX_WH = 7680

DEFAULT_SETTINGS = {
    # A candidate is kept when its score is above this (Ultralytics' conf, predict default 0.25).
    "min_confidence": 0.25,
    # Within one class, a box overlapping a better one by more than this IoU is dropped (Ultralytics' iou).
    "iou": 0.45,
    # At most this many detections per photo (Ultralytics' max_det).
    "max_det": 300,
    # "v5" or "v8" (see the module docstring); registration records what the check found.
    "layout": None,
    # [width, height] of the network input: the export's own when it is fixed.
    "input_size": [640, 640],
    # The label of each class index, in order (recorded at registration).
    "classes": [],
}


# --- labels ---------------------------------------------------------------------------------------


def label_from_name(name: str, index: int) -> str:
    """A class name as a label: lower case, runs of anything but letters and digits as one
    underscore ("traffic light" -> "traffic_light"); "class_<index>" when nothing is left, and
    "c_" before a name that starts with a digit."""
    label = re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")
    if not label:
        label = f"class_{index}"
    elif not label[0].isalpha():
        label = f"c_{label}"
    return label[:LABEL_MAX_LENGTH].rstrip("_") or f"class_{index}"


def labels_from_names(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """(labels by class index, {name: label} for every name that changed). Raises ValueError when
    two classes come out as one label."""
    labels = [label_from_name(name, i) for i, name in enumerate(names)]
    if len(set(labels)) != len(labels):
        seen: dict[str, str] = {}
        for name, label in zip(names, labels):
            if label in seen:
                raise ValueError(f"classes {seen[label]!r} and {name!r} both become label {label!r}")
            seen[label] = name
    assert all(label_valid(label) for label in labels)
    return labels, {str(name): label for name, label in zip(names, labels) if str(name) != label}


def parse_names(text: str) -> list[str]:
    """Ultralytics' ``names`` metadata (``"{0: 'person', 1: 'bicycle'}"``, a Python literal, read
    with ast.literal_eval: never eval) as a list by class index. Raises ValueError."""
    value = ast.literal_eval(text)
    if isinstance(value, list | tuple):
        value = dict(enumerate(value))
    if not isinstance(value, dict) or not value:
        raise ValueError("names is not a non-empty {index: name} mapping")
    try:
        indices = sorted(int(k) for k in value)
    except (TypeError, ValueError):
        raise ValueError("names has keys that are not class indices") from None
    if indices != list(range(len(indices))):
        raise ValueError("names' class indices are not 0..n-1")
    return [str(value[k] if k in value else value[str(k)]) for k in indices]


# --- the steps around the network ---------------------------------------------------------------


def letterbox(array: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float, tuple[int, int]]:
    """An (H, W, 3) uint8 image letterboxed into ``size`` (width, height) as Ultralytics'
    LetterBox(auto=False, scale_fill=False, scaleup=True, center=True) does: (the padded image,
    the scale, (left, top) padding)."""
    import cv2

    h, w = array.shape[:2]
    new_w, new_h = size
    r = min(new_h / h, new_w / w)
    # At least one pixel: a thin strip (4000 x 16 into 64 x 64) would otherwise round to nothing.
    unpad_w, unpad_h = max(1, int(round(w * r))), max(1, int(round(h * r)))
    dw, dh = (new_w - unpad_w) / 2, (new_h - unpad_h) / 2
    if (w, h) != (unpad_w, unpad_h):
        array = cv2.resize(array, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    padded = cv2.copyMakeBorder(array, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return padded, r, (left, top)


def to_tensor(padded: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8 -> (1, 3, H, W) float32 in [0, 1]."""
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255.0)


def scale_boxes(boxes: np.ndarray, *, input_size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """xyxy boxes in the letterboxed input mapped back to the photo and clamped to it, as
    ultralytics.utils.ops.scale_boxes (padding=True) does. Sizes are (width, height)."""
    in_w, in_h = input_size
    w, h = image_size
    gain = min(in_h / h, in_w / w)
    pad_x = round((in_w - w * gain) / 2 - 0.1)
    pad_y = round((in_h - h * gain) / 2 - 0.1)
    out = boxes.astype(np.float64, copy=True)
    out[:, [0, 2]] -= pad_x
    out[:, [1, 3]] -= pad_y
    out /= gain
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


# Ultralytics' NMS is torchvision's, applied per class (decode offsets boxes by class).
nms = nms_arrays


def decode(output: np.ndarray, *, layout: str, min_confidence: float, iou: float, max_det: int) -> np.ndarray:
    """The network's output for one image -> (K, 6) rows of x1, y1, x2, y2, score, class in input
    pixels, after the score threshold and class-aware NMS, best first."""
    pred = np.asarray(output, dtype=np.float32)
    if pred.ndim == 3:
        pred = pred[0]
    if layout == "v8":
        pred = pred.T  # (N, 4 + nc)
        scores_all = pred[:, 4:]
    elif layout == "v5":
        # Ultralytics (and YOLOv5's own NMS) first drop candidates whose objectness is at or below
        # the threshold, then multiply the class scores by it.
        pred = pred[pred[:, 4] > min_confidence]
        scores_all = pred[:, 5:] * pred[:, 4:5]
    else:
        raise ArtifactInvalid(f"unknown layout {layout!r}")
    if scores_all.shape[1] == 0:
        return np.zeros((0, 6))
    cls = scores_all.argmax(axis=1)
    score = scores_all[np.arange(len(cls)), cls]
    keep = score > min_confidence
    xywh, score, cls = pred[keep, :4], score[keep], cls[keep]
    boxes = np.empty_like(xywh)
    boxes[:, 0] = xywh[:, 0] - xywh[:, 2] / 2
    boxes[:, 1] = xywh[:, 1] - xywh[:, 3] / 2
    boxes[:, 2] = xywh[:, 0] + xywh[:, 2] / 2
    boxes[:, 3] = xywh[:, 1] + xywh[:, 3] / 2
    offset = cls[:, None].astype(np.float32) * MAX_WH
    kept = nms(boxes + offset, score, iou)[:max_det]
    return np.concatenate([boxes[kept], score[kept, None], cls[kept, None].astype(np.float32)], axis=1).astype(np.float64)


def layout_of(shape: tuple, num_classes: int | None) -> str:
    """Which layout an output of ``shape`` ([1, a, b]) is: by the class count when known, else by
    which side is the short one (the attributes are far fewer than the candidates)."""
    if len(shape) != 3:
        raise ArtifactInvalid(f"output has shape {list(shape)}, not [1, attributes, candidates] or [1, candidates, attributes]")
    _, a, b = shape
    if num_classes is not None:
        if isinstance(a, int) and a == 4 + num_classes:
            return "v8"
        if isinstance(b, int) and b == 5 + num_classes:
            return "v5"
        raise ArtifactInvalid(
            f"output shape {list(shape)} fits neither [1, 4+{num_classes}, N] nor [1, N, 5+{num_classes}] for {num_classes} classes"
        )
    if isinstance(a, int) and (not isinstance(b, int) or a < b):
        return "v8"
    if isinstance(b, int):
        return "v5"
    raise ArtifactInvalid(f"output shape {list(shape)}: cannot tell its layout")


def num_classes_of(shape: tuple, layout: str) -> int:
    """How many classes an output of ``shape`` in ``layout`` has."""
    n = (shape[1] - 4) if layout == "v8" else (shape[2] - 5)
    if not isinstance(n, int) or n < 1:
        raise ArtifactInvalid(f"output shape {list(shape)} has no class scores for layout {layout}")
    return n


def read_metadata(path: Path) -> dict[str, str]:
    """The model's metadata_props (Ultralytics writes names, imgsz, stride, task), without
    loading any external data."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


# --- the engine ------------------------------------------------------------------------------


class YoloOnnxDetector(Detector):
    """An Ultralytics ONNX export run by OpenVINO on the CPU. ``model_path`` is a local file whose
    sha256 is the one the spec registers (checked here again before it is read)."""

    name = "yolo-onnx"

    def __init__(self, *, spec: DetectorSpec, device: str = "cpu", threads: int = 0, model_path: Path) -> None:
        super().__init__(spec=spec, device=device)
        self.settings = {**DEFAULT_SETTINGS, **spec.settings}
        self.threads = threads
        # OpenVINO's GPU plugin drives Intel GPUs, not CUDA; a CUDA path needs ONNX Runtime's
        # CUDA build, which this service does not install (docs/models.md).
        self.require_cpu("OpenVINO engine", "no ONNX engine here")
        expected = list(spec.weights.values())
        if len(expected) != 1:
            raise WeightsMismatch(f"{spec.id} must register exactly one weight (its model file), not {len(expected)}")
        actual = sha256_file(model_path)
        if actual != expected[0]:
            raise WeightsMismatch(f"model file has sha256 {actual[:12]}…, registered {expected[0][:12]}…")
        self._load(Path(model_path))

    def _load(self, path: Path) -> None:
        import openvino

        core = openvino.Core()
        config = cpu_compile_config(spec_id=self.spec.id, settings=self.settings, threads=self.threads)
        try:
            model = core.read_model(str(path))
            if len(model.inputs) != 1:
                raise ArtifactInvalid(f"the model has {len(model.inputs)} inputs, not one image")
            width, height = (int(v) for v in self.settings["input_size"])
            if model.inputs[0].get_partial_shape().is_dynamic:
                model.reshape({model.inputs[0]: [1, 3, height, width]})
            compiled = core.compile_model(model, "CPU", config)
        except ArtifactInvalid:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise ArtifactInvalid(f"OpenVINO could not load the model: {str(exc)[:300]}") from exc
        compiled_precision_check(compiled, config, spec_id=self.spec.id, what="the model")
        shape = tuple(int(d) for d in compiled.inputs[0].get_shape())
        self.input_wh = (shape[3], shape[2])
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: threads sharing the detector take turns
        out_shape = tuple(compiled.outputs[0].get_partial_shape().to_shape()) if compiled.outputs[0].get_partial_shape().is_static else None
        classes = list(self.settings["classes"])
        if not classes:
            names = read_metadata(path).get("names")
            if names is None:
                raise ArtifactInvalid("the version names no classes and the model has no names metadata")
            try:
                classes, _ = labels_from_names(parse_names(names))
            except (ValueError, SyntaxError) as exc:
                raise ArtifactInvalid(f"the model's names metadata: {exc}") from exc
        layout = self.settings["layout"]
        if layout is None:
            if out_shape is None:
                raise ArtifactInvalid("the output shape is dynamic: name the layout in the settings")
            layout = layout_of(out_shape, len(classes))
        if layout not in LAYOUTS:
            raise ArtifactInvalid(f"layout {layout!r} is not one of {LAYOUTS}")
        self.layout = layout
        self.classes = classes
        logger.info(
            "loaded detector %s on cpu (OpenVINO %s, %s, %d classes, %s threads)",
            self.model_version,
            openvino.__version__,
            layout,
            len(classes),
            self.threads or "all",
        )

    def input_size(self, inputs: dict[str, Any]) -> tuple[int, int]:
        # The photo's own size: any photo is letterboxed into the network's input.
        return super().input_size(inputs["array"])

    def preprocess(self, image: Image.Image) -> dict[str, Any]:
        array = np.asarray(image, dtype=np.uint8)
        padded, _, _ = letterbox(array, self.input_wh)
        return {"array": array, "tensor": to_tensor(padded)}

    def predict(self, inputs: dict[str, Any]) -> np.ndarray:
        with self._lock:
            result = self._request.infer({0: inputs["tensor"]})
            return np.array(result[self._compiled.outputs[0]])

    def postprocess(self, raw: np.ndarray, inputs: dict[str, Any]) -> list[Detection]:
        s = self.settings
        rows = decode(raw, layout=self.layout, min_confidence=float(s["min_confidence"]), iou=float(s["iou"]), max_det=int(s["max_det"]))
        height, width = inputs["array"].shape[:2]
        boxes = scale_boxes(rows[:, :4], input_size=self.input_wh, image_size=(width, height))
        detections = []
        for box, row in zip(boxes, rows):
            cls = int(row[5])
            if cls >= len(self.classes):
                raise ArtifactInvalid(f"the model returned class {cls}; the version has {len(self.classes)}")
            detections.append(
                Detection(
                    x1=float(box[0]),
                    y1=float(box[1]),
                    x2=float(box[2]),
                    y2=float(box[3]),
                    confidence=min(max(float(row[4]), 0.0), 1.0),
                    label=self.classes[cls],
                )
            )
        return detections
