"""People with OpenCV's HOG + linear SVM pedestrian detector, behind the Detector interface.

The detector is Dalal and Triggs' (2005): histograms of oriented gradients in a 64 x 128 window,
scored by a linear SVM trained on upright, whole-body pedestrians (INRIA Person). Its
coefficients are compiled into OpenCV (``cv2.HOGDescriptor_getDefaultPeopleDetector()``, 3781
float32 values): nothing is downloaded. They are the version's one weight: their sha256 (over the
float32 little-endian bytes, ``default_people_coefficients``) is registered like a file's
(detection/weights.py BUILTIN_WEIGHTS) and checked before they are used, so an OpenCV build with
other coefficients is refused as a changed weight file would be.

Settings (OpenCV's ``HOGDescriptor.detectMultiScale`` arguments, then ours):
  - ``hit_threshold``: the SVM score a window must exceed (OpenCV's hitThreshold, 0 by default);
  - ``win_stride`` [x, y] and ``padding`` [x, y] in pixels; ``scale``: the pyramid step;
  - ``group_threshold``: how many overlapping windows a detection needs (OpenCV's finalThreshold);
  - ``max_side``: photos whose longest side is larger are downscaled to it first (boxes are scaled
    back): the search time grows with the pixel count; 0 disables it;
  - ``nms_iou``: a box overlapping a better one by more than this IoU is dropped (OpenCV's
    grouping leaves nested boxes); ``min_confidence``: detections below it are dropped.

Confidence. The SVM gives a signed distance to its hyperplane (the grouped windows' weight,
about 0 to 3 on real photos), not a probability. The confidence is its logistic, ``1 / (1 +
exp(-w))``: monotone in w, in (0, 1), a ranking score within this detector only.
"""

import hashlib
import logging
from typing import Any

import numpy as np
from PIL import Image

from .base import Detection, Detector, DetectorSpec
from .boxes import logistic, nms
from .weights import WeightsMismatch, verify_weights

logger = logging.getLogger(__name__)

LABEL = "person"
WEIGHT_NAME = "hog_default_people_detector.f32le"
WINDOW = (64, 128)  # (width, height) of the default people detector's window

DEFAULT_SETTINGS = {
    "hit_threshold": 0.0,
    "win_stride": [8, 8],
    "padding": [8, 8],
    "scale": 1.05,
    "group_threshold": 2.0,
    "max_side": 1024,
    "nms_iou": 0.3,
    "min_confidence": 0.0,
}


def default_people_coefficients() -> bytes:
    """The SVM coefficients OpenCV's build carries, as float32 little-endian bytes (what the
    registered sha256 is taken over)."""
    import cv2

    return np.ascontiguousarray(cv2.HOGDescriptor_getDefaultPeopleDetector(), dtype="<f4").tobytes()


def confidence_from_weight(weight: float) -> float:
    """The SVM's signed distance as a (0, 1) ranking score: its logistic, without overflow."""
    return logistic(float(weight))


class HogDetector(Detector):
    name = "hog"

    def __init__(self, *, spec: DetectorSpec, device: str = "cpu", threads: int = 0) -> None:
        super().__init__(spec=spec, device=device)
        self.require_cpu("OpenCV HOG")
        self.settings = {**DEFAULT_SETTINGS, **spec.settings}
        self.threads = threads  # CPU threads per detection; 0: OpenCV's default (all cores)
        self._load()

    def _load(self) -> None:
        import cv2

        self._cv2 = cv2
        if self.threads:
            cv2.setNumThreads(self.threads)  # process-wide, like the cascade family's
        if WEIGHT_NAME not in self.spec.weights:
            raise WeightsMismatch(f"{self.spec.id} does not register {WEIGHT_NAME}")
        verify_weights("hog", self.spec.weights)
        coefficients = default_people_coefficients()
        # Checked again on the very bytes handed to the SVM (verify_weights may have read a cache).
        actual = hashlib.sha256(coefficients).hexdigest()
        if actual != self.spec.weights[WEIGHT_NAME]:
            raise WeightsMismatch(f"OpenCV's people detector has sha256 {actual[:12]}…, registered {self.spec.weights[WEIGHT_NAME][:12]}…")
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(np.frombuffer(coefficients, dtype="<f4").astype(np.float32))
        logger.info(
            "loaded detector %s on cpu (OpenCV %s HOG people detector, %s threads)",
            self.model_version,
            cv2.__version__,
            self.threads or "default",
        )

    @property
    def min_input_side(self) -> int:
        return min(WINDOW)

    def input_size(self, inputs: dict[str, Any]) -> tuple[int, int]:
        return super().input_size(inputs["array"])

    def preprocess(self, image: Image.Image) -> dict[str, Any]:
        array = np.asarray(image, dtype=np.uint8)
        scale = 1.0
        max_side = int(self.settings["max_side"] or 0)
        height, width = array.shape[:2]
        if max_side and max(width, height) > max_side:
            scale = max_side / max(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            array = self._cv2.resize(array, size, interpolation=self._cv2.INTER_AREA)
        return {"array": np.ascontiguousarray(array), "scale": scale, "size": image.size}

    def predict(self, inputs: dict[str, Any]) -> list[tuple[float, float, float, float, float]]:
        """[(x1, y1, x2, y2, SVM weight)] in the downscaled image's pixels."""
        array = inputs["array"]
        height, width = array.shape[:2]
        if width < WINDOW[0] or height < WINDOW[1]:
            return []  # not even one window fits
        s = self.settings
        boxes, weights = self._hog.detectMultiScale(
            array,
            hitThreshold=float(s["hit_threshold"]),
            winStride=tuple(int(v) for v in s["win_stride"]),
            padding=tuple(int(v) for v in s["padding"]),
            scale=float(s["scale"]),
            groupThreshold=float(s["group_threshold"]),
        )
        return [
            (float(x), float(y), float(x + w), float(y + h), float(weight))
            for (x, y, w, h), weight in zip(np.asarray(boxes).reshape(-1, 4), np.ravel(weights))
        ]

    def postprocess(self, raw: list[tuple[float, float, float, float, float]], inputs: dict[str, Any]) -> list[Detection]:
        scale = inputs["scale"]
        height, width = inputs["array"].shape[:2]
        limit_x, limit_y = inputs["size"]
        # A window may reach past the image (padding): clamp, then suppress nested boxes.
        boxes = [
            (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))
            for x1, y1, x2, y2, _ in raw
        ]
        scores = [confidence_from_weight(weight) for *_, weight in raw]
        detections = []
        for i in nms(boxes, scores, float(self.settings["nms_iou"])):
            x1, y1, x2, y2 = boxes[i]
            if scores[i] < float(self.settings["min_confidence"]) or x2 <= x1 or y2 <= y1:
                continue
            detections.append(
                Detection(
                    x1=min(x1 / scale, limit_x),
                    y1=min(y1 / scale, limit_y),
                    x2=min(x2 / scale, limit_x),
                    y2=min(y2 / scale, limit_y),
                    confidence=scores[i],
                    label=LABEL,
                )
            )
        detections.sort(key=lambda d: (-d.confidence, d.x1, d.y1, d.x2, d.y2))
        return detections
