"""A fast, deterministic stand-in detector for unit tests. End-to-end tests never use it.

It reports one "face" in the middle of any image that is not a single flat colour, so tests can
tell an empty image from a busy one without running a network.

With the setting ``"detections": ["person", "cat", ...]`` it reports one detection per listed
label instead, side by side across the middle of the image, most confident first (0.99, 0.89,
0.79, ...); only "face" detections have landmarks. A stand-in for models of other labels.
"""

from PIL import Image, ImageStat

from .base import LANDMARK_NAMES, Detection, Detector
from .labels import FACE


class StubDetector(Detector):
    name = "stub"

    def preprocess(self, image: Image.Image) -> Image.Image:
        return image

    def predict(self, inputs: Image.Image) -> bool:
        return any(lo != hi for lo, hi in ImageStat.Stat(inputs).extrema)

    def postprocess(self, raw: bool, inputs: Image.Image) -> list[Detection]:
        if not raw:
            return []
        w, h = inputs.size
        labels = self.settings.get("detections")
        if labels is not None:
            return [self._labelled(label, rank, len(labels), w, h) for rank, label in enumerate(labels)]
        x1, y1, x2, y2 = w * 0.25, h * 0.25, w * 0.75, h * 0.75
        points = [(w * 0.4, h * 0.4), (w * 0.6, h * 0.4), (w * 0.5, h * 0.5), (w * 0.4, h * 0.6), (w * 0.6, h * 0.6)]
        return [Detection(x1=x1, y1=y1, x2=x2, y2=y2, confidence=0.99, landmarks=dict(zip(LANDMARK_NAMES, points)))]

    @staticmethod
    def _labelled(label: str, rank: int, count: int, w: int, h: int) -> Detection:
        # The rank-th of ``count`` equal slots across the middle of the image, with a gap.
        slot = w * 0.8 / count
        x1, x2 = w * 0.1 + slot * rank, w * 0.1 + slot * (rank + 0.9)
        y1, y2 = h * 0.25, h * 0.75
        landmarks = {}
        if label == FACE:
            cx, cy, bw, bh = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
            offsets = [(-0.2, -0.2), (0.2, -0.2), (0.0, 0.0), (-0.2, 0.2), (0.2, 0.2)]
            landmarks = {name: (cx + dx * bw, cy + dy * bh) for name, (dx, dy) in zip(LANDMARK_NAMES, offsets)}
        return Detection(x1=x1, y1=y1, x2=x2, y2=y2, confidence=round(0.99 - 0.1 * rank, 2), landmarks=landmarks, label=label)
