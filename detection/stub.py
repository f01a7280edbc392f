"""A fast, deterministic stand-in detector for unit tests. End-to-end tests never use it.

It reports one "face" in the middle of any image that is not a single flat colour, so tests can
tell an empty image from a busy one without running a network.
"""

from PIL import Image, ImageStat

from .base import LANDMARK_NAMES, Detection, Detector


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
        x1, y1, x2, y2 = w * 0.25, h * 0.25, w * 0.75, h * 0.75
        points = [(w * 0.4, h * 0.4), (w * 0.6, h * 0.4), (w * 0.5, h * 0.5), (w * 0.4, h * 0.6), (w * 0.6, h * 0.6)]
        return [Detection(x1=x1, y1=y1, x2=x2, y2=y2, confidence=0.99, landmarks=dict(zip(LANDMARK_NAMES, points)))]
