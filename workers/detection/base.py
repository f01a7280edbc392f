"""The detector interface: preprocess -> predict -> postprocess, on an RGB PIL image."""

import abc
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class Detection:
    """One face in the pixel coordinates of the image given to ``detect``."""

    x1: float
    y1: float
    x2: float
    y2: float
    confidence: float
    landmarks: dict[str, tuple[float, float]] = field(default_factory=dict)


class Detector(abc.ABC):
    """A loaded detector version. ``detect`` must be deterministic for a given image and version."""

    name: str
    version: str

    def __init__(self, *, settings: dict[str, Any], device: str = "cpu") -> None:
        self.settings = dict(settings)
        self.device = device

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def settings_hash(self) -> str:
        canonical = json.dumps(self.settings, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def model_version(self) -> str:
        """The stable label recorded on every job: the version id plus a hash of its settings,
        so that two configurations never share a label."""
        return f"{self.id}+settings.{self.settings_hash[:8]}"

    def detect(self, image: Image.Image) -> list[Detection]:
        """Faces in an RGB image, most confident first."""
        if image.mode != "RGB":
            raise ValueError(f"detect() takes RGB images, not {image.mode}")
        inputs = self.preprocess(image)
        raw = self.predict(inputs)
        return self.postprocess(raw, inputs)

    @abc.abstractmethod
    def preprocess(self, image: Image.Image) -> Any: ...

    @abc.abstractmethod
    def predict(self, inputs: Any) -> Any: ...

    @abc.abstractmethod
    def postprocess(self, raw: Any, inputs: Any) -> list[Detection]: ...
