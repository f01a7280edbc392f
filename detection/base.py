"""The detector interface: preprocess -> predict -> postprocess, on an RGB PIL image."""

import abc
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def settings_hash(settings: dict[str, Any]) -> str:
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class DetectorUnavailable(RuntimeError):
    """The detector cannot run here (e.g. CUDA asked for but absent)."""


@dataclass(frozen=True)
class DetectorSpec:
    """A registered version, as a worker needs it to load the detector (no database objects)."""

    id: str  # name@version
    label: str  # name@version+weights.<digest>
    implementation: str
    settings: dict[str, Any]
    weights: dict[str, str]  # file name -> sha256


def weight_checksums(weights: list[dict[str, str]]) -> dict[str, str]:
    """[{"file", "sha256"}, ...] as registered -> {file: sha256}."""
    return {w["file"]: w["sha256"] for w in weights}


def spec_from_file(path: Path) -> DetectorSpec:
    """The spec of a version file in detector_versions/, without the database (benchmarks,
    tests). Its label is the bare id: the registry's label adds the weights digest."""
    data = json.loads(Path(path).read_text())
    version_id = f"{data['name']}@{data['version']}"
    return DetectorSpec(
        id=version_id,
        label=version_id,
        implementation=data["implementation"],
        settings=data["settings"],
        weights=weight_checksums(data["weights"]),
    )


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

    def __init__(self, *, spec: DetectorSpec, device: str = "cpu") -> None:
        self.spec = spec
        self.settings = dict(spec.settings)
        self.device = device

    @property
    def model_version(self) -> str:
        """The label recorded on every job and face (see registry.models.DetectorVersion.label)."""
        return self.spec.label

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
