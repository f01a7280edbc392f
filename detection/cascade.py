"""Objects beyond faces with OpenCV's Haar cascades, behind the Detector interface.

The cascades are the XML files opencv-python-headless ships in its wheel (``cv2/data``): nothing
is downloaded. Each file a version uses is checked against its registered sha256 before OpenCV
reads it; a mismatch refuses. The version's settings map each label it returns to a cascade:

    "classes": {"cat": {"file": "haarcascade_frontalcatface_extended.xml", "scale_factor": 1.03,
                        "min_neighbors": 4, "min_size": [32, 32], "pad": 0.25}, ...}

``min_size`` is in pixels of the downscaled image (see ``max_side``); ``pad`` is explained in
``_padded``.

Confidence. A Haar cascade gives no probability. ``detectMultiScale3(outputRejectLevels=True)``
returns, for each grouped detection, the summed weak-classifier outputs of the cascade's last
stage (the "level weight", w, about -2 to 2 on real photos). OpenCV trains its cascades with
Gentle AdaBoost, whose additive score estimates half the log-odds of the class (Friedman, Hastie
and Tibshirani, 2000), so the confidence is ``1 / (1 + exp(-2 w))``: monotone in w, in (0, 1).
It is a ranking score within one cascade, not a calibrated probability: the last stage only sees
windows that passed every earlier stage, and nothing calibrated it on real photos. Scores of
different classes are not comparable either.
"""

import logging
from typing import Any

import numpy as np
from PIL import Image

from .base import Detection, Detector, DetectorSpec
from .boxes import logistic, nms
from .weights import WeightsMismatch, verify_weights

logger = logging.getLogger(__name__)

DEFAULT_SETTINGS = {
    # label -> cascade settings (see the module docstring); a version names its own.
    "classes": {},
    # Images whose longest side is larger are downscaled to it before detection (boxes are scaled
    # back): a cascade's time grows with the pixel count. 0 disables it.
    "max_side": 1024,
    # Histogram-equalise the grayscale copy first. OpenCV's cascades already normalise each
    # window by its own variance, and on the test photos equalising cost the cat and added false
    # positives, so versions may turn it off.
    "equalize_hist": True,
    # Detections below this confidence are dropped (0: keep every one the cascades return).
    "min_confidence": 0.0,
    # Within one class, a box overlapping a more confident one by more than this IoU is dropped:
    # OpenCV's grouping merges only near-identical boxes and leaves nested ones.
    "nms_iou": 0.3,
}


def confidence_from_level_weight(weight: float) -> float:
    """The last stage's Gentle AdaBoost score as a (0, 1) ranking score (see the module
    docstring): the logistic of twice the score, computed without overflow."""
    return logistic(2.0 * float(weight))


class CascadeDetector(Detector):
    name = "cascade"

    def __init__(self, *, spec: DetectorSpec, device: str = "cpu", threads: int = 0) -> None:
        super().__init__(spec=spec, device=device)
        self.require_cpu("OpenCV cascades")
        self.settings = {**DEFAULT_SETTINGS, **spec.settings}
        self.threads = threads  # CPU threads per detection; 0: OpenCV's default (all cores)
        if not self.settings["classes"]:
            raise ValueError(f"{spec.id} names no classes")
        self._load()

    def _load(self) -> None:
        # cv2 is imported here, not at module level: the web process never pays for it.
        import cv2

        self._cv2 = cv2
        if self.threads:
            # Process-wide in OpenCV (like torch's). detectMultiScale spreads its scales over
            # this pool; the worker gives each pool process its share of the cores.
            cv2.setNumThreads(self.threads)
        # The files are checked against the registered checksums before OpenCV reads them.
        paths = verify_weights("cascade", self.spec.weights)
        self._cascades: dict[str, Any] = {}
        self._windows: dict[str, tuple[int, int]] = {}
        for label, conf in sorted(self.settings["classes"].items()):
            path = paths.get(conf["file"])
            if path is None:
                raise WeightsMismatch(f"{self.spec.id} does not register {conf['file']} (class {label})")
            cascade = cv2.CascadeClassifier(str(path))
            if cascade.empty():
                raise WeightsMismatch(f"OpenCV could not read {conf['file']} (class {label})")
            self._cascades[label] = cascade
            width, height = cascade.getOriginalWindowSize()
            self._windows[label] = (int(width), int(height))
        logger.info(
            "loaded detector %s on cpu (%s, %s threads)", self.model_version, ", ".join(sorted(self._cascades)), self.threads or "default"
        )

    @property
    def labels(self) -> list[str]:
        return sorted(self._cascades)

    def _smallest(self, label: str) -> tuple[int, int]:
        """The smallest box (w, h) this class is searched for: its window, or min_size if larger."""
        win_w, win_h = self._windows[label]
        min_w, min_h = self.settings["classes"][label].get("min_size") or (0, 0)
        return max(win_w, int(min_w)), max(win_h, int(min_h))

    @property
    def min_input_side(self) -> int:
        """Below the shortest side of every class's smallest box, no class can search the image."""
        return min(min(self._smallest(label)) for label in self._cascades)

    def input_size(self, inputs: dict[str, Any]) -> tuple[int, int]:
        return super().input_size(inputs["gray"])

    def preprocess(self, image: Image.Image) -> dict[str, Any]:
        cv2 = self._cv2
        gray = cv2.cvtColor(np.asarray(image, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
        scale = 1.0
        max_side = int(self.settings["max_side"] or 0)
        height, width = gray.shape
        if max_side and max(width, height) > max_side:
            scale = max_side / max(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            # INTER_AREA: the resampling that keeps a downscale free of aliasing.
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        if self.settings["equalize_hist"]:
            gray = cv2.equalizeHist(gray)
        return {"gray": np.ascontiguousarray(gray), "scale": scale, "size": image.size}

    def _padded(self, gray: np.ndarray, pad: float) -> tuple[np.ndarray, int]:
        """The image with ``pad`` times its shorter side of replicated edge added on each side.

        Why: a cascade matches a whole object inside its window, and in close-ups the object is
        cut by the frame (a cat's face without its ears, a portrait's shoulders); the padding lets
        a window reach past the edge. Relative to the shorter side, so a thin strip stays thin."""
        px = int(round(pad * min(gray.shape)))
        if px <= 0:
            return gray, 0
        return self._cv2.copyMakeBorder(gray, px, px, px, px, self._cv2.BORDER_REPLICATE), px

    def predict(self, inputs: dict[str, Any]) -> dict[str, list[tuple[float, float, float, float, float]]]:
        """label -> [(x1, y1, x2, y2, level weight)] in the unpadded, downscaled image's pixels."""
        gray = inputs["gray"]
        height, width = gray.shape
        found: dict[str, list[tuple[float, float, float, float, float]]] = {}
        for label, cascade in self._cascades.items():
            conf = self.settings["classes"][label]
            min_w, min_h = self._smallest(label)
            found[label] = []
            if width < min_w or height < min_h:
                continue  # this class's smallest object cannot fit
            image, px = self._padded(gray, float(conf.get("pad", 0.0)))
            boxes, _levels, weights = cascade.detectMultiScale3(
                image,
                scaleFactor=float(conf["scale_factor"]),
                minNeighbors=int(conf["min_neighbors"]),
                minSize=(min_w, min_h),
                outputRejectLevels=True,
            )
            for (x, y, w, h), weight in zip(np.asarray(boxes).reshape(-1, 4), np.ravel(weights)):
                x1, y1 = float(x) - px, float(y) - px
                found[label].append((x1, y1, x1 + float(w), y1 + float(h), float(weight)))
        return found

    def postprocess(self, raw: dict[str, list[tuple[float, float, float, float, float]]], inputs: dict[str, Any]) -> list[Detection]:
        scale = inputs["scale"]
        height, width = inputs["gray"].shape
        # Scaling back may overshoot the original by a rounding of the downscale: clamp again.
        limit_x, limit_y = inputs["size"]
        min_confidence = float(self.settings["min_confidence"])
        detections = []
        for label, found in raw.items():
            # Clamp to the image (a padded window may reach past it), then NMS within the class.
            boxes = [
                (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))
                for x1, y1, x2, y2, _ in found
            ]
            scores = [confidence_from_level_weight(weight) for *_, weight in found]
            for i in nms(boxes, scores, float(self.settings["nms_iou"])):
                x1, y1, x2, y2 = boxes[i]
                if scores[i] < min_confidence or x2 <= x1 or y2 <= y1:
                    continue
                detections.append(
                    Detection(
                        x1=min(x1 / scale, limit_x),
                        y1=min(y1 / scale, limit_y),
                        x2=min(x2 / scale, limit_x),
                        y2=min(y2 / scale, limit_y),
                        confidence=scores[i],
                        label=label,
                    )
                )
        detections.sort(key=lambda d: (-d.confidence, d.label, d.x1, d.y1, d.x2, d.y2))
        return detections
