"""The detector interface: preprocess -> predict -> postprocess, on an RGB PIL image."""

import abc
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import DetectorUnavailable
from .labels import FACE
from .precision import precision_of

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def settings_hash(settings: dict[str, Any]) -> str:
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ArtifactInvalid(DetectorUnavailable):
    """A version's model file (an uploaded artifact) cannot be run by its engine: a job on it
    fails with ``model_artifact_invalid``."""


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
    """One detected object in the pixel coordinates of the image given to ``detect``.

    ``label`` is what it is: "face" for face models, the class name otherwise (e.g. "person").
    ``landmarks`` holds only the points the model really has, by name (none invented)."""

    x1: float
    y1: float
    x2: float
    y2: float
    confidence: float
    landmarks: dict[str, tuple[float, float]] = field(default_factory=dict)
    label: str = FACE


class Detector(abc.ABC):
    """A loaded detector version. ``detect`` must be deterministic for a given image and version."""

    name: str

    def __init__(self, *, spec: DetectorSpec, device: str = "cpu") -> None:
        self.spec = spec
        self.settings = dict(spec.settings)
        self.device = device
        # Every engine runs at the precision its version records; one it does not offer is
        # refused before anything loads (detection/precision.py).
        precision_of(spec.id, spec.settings)

    def require_cpu(self, runtime: str, advice: str = "") -> None:
        """Refuse any device but the CPU, for engines whose runtime has no other path here: a
        worker is never moved silently to a device other than the one it was configured for."""
        if self.device != "cpu":
            raise DetectorUnavailable(
                f"{self.spec.id} runs on the CPU only ({runtime}); DETECTOR_DEVICE={self.device}" + (f": {advice}" if advice else "")
            )

    @property
    def model_version(self) -> str:
        """The label recorded on every job and face (see registry.models.DetectorVersion.label)."""
        return self.spec.label

    @property
    def min_input_side(self) -> int:
        """The shortest side, in pixels of the preprocessed input, that this detector can search.

        1 (any image) unless an implementation says otherwise: one whose model cannot look at
        inputs below some size overrides this (MTCNN: its smallest face size)."""
        return 1

    def input_size(self, inputs: Any) -> tuple[int, int]:
        """(width, height) of what ``preprocess`` returned. Handles a PIL image and an HxW[xC]
        array; an implementation whose inputs are anything else overrides it."""
        if isinstance(inputs, Image.Image):
            return inputs.size
        shape = getattr(inputs, "shape", None)
        if shape is not None and len(shape) >= 2:
            return int(shape[1]), int(shape[0])
        raise NotImplementedError(f"{type(self).__name__} must override input_size() for {type(inputs).__name__} inputs")

    def detect(self, image: Image.Image) -> list[Detection]:
        """Faces in an RGB image, most confident first."""
        if image.mode != "RGB":
            raise ValueError(f"detect() takes RGB images, not {image.mode}")
        inputs = self.preprocess(image)
        # Why: an input smaller than the smallest face this version looks for cannot hold a face,
        # and models are not obliged to cope with it (MTCNN's image pyramid comes out empty and
        # facenet-pytorch raises). Such a valid image is a normal "0 faces", for every engine, so
        # the check is here and not in each implementation. It is made after preprocess, since a
        # downscale (MTCNN's max_side) can turn a 40x5000 strip into a 16x2048 one.
        if min(self.input_size(inputs)) < self.min_input_side:
            return []
        raw = self.predict(inputs)
        return self.postprocess(raw, inputs)

    @abc.abstractmethod
    def preprocess(self, image: Image.Image) -> Any: ...

    @abc.abstractmethod
    def predict(self, inputs: Any) -> Any: ...

    @abc.abstractmethod
    def postprocess(self, raw: Any, inputs: Any) -> list[Detection]: ...
