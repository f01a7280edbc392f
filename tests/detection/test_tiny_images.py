"""Images too small for the smallest face a version looks for: 0 faces, never a crash.

Every implementation in the registry is held to it (Detector.detect checks min_input_side after
preprocess), so a new engine must be added to SPECS below or this module fails.
"""

import dataclasses
import hashlib

import numpy as np
import pytest
from PIL import Image

from detection import Detection, Detector, DetectorSpec, engines
from detection.base import spec_from_file
from detection.engines import IMPLEMENTATIONS
from tests import yolo_models
from tests.conftest import ROOT

VERSIONS = ROOT / "detector_versions"
# An uploaded version's engine runs the tests' small YOLOv8-layout model (64 x 64 input).
TINY_YOLO = yolo_models.tiny_v8()
TINY_YOLO_SHA256 = hashlib.sha256(TINY_YOLO).hexdigest()

# implementation -> the specs it is tested with.
SPECS = {
    "mtcnn": [spec_from_file(VERSIONS / "mtcnn@1.0.0.json"), spec_from_file(VERSIONS / "mtcnn@1.1.0.json")],
    "mtcnn-openvino": [spec_from_file(VERSIONS / "mtcnn@1.2.0.json")],
    "stub": [DetectorSpec(id="stub@0.0.0", label="stub@0.0.0", implementation="stub", settings={}, weights={})],
    "blazeface": [spec_from_file(VERSIONS / "blazeface@1.0.0.json")],
    "cascade": [spec_from_file(VERSIONS / "cascade@1.0.0.json")],
    "hog": [spec_from_file(VERSIONS / "hog@1.0.0.json")],
    "yolo-onnx": [
        DetectorSpec(
            id="tiny@1.0.0",
            label="tiny@1.0.0",
            implementation="yolo-onnx",
            settings={"classes": ["person", "traffic_light", "dog"], "layout": "v8", "input_size": [64, 64]},
            weights={"model.onnx": TINY_YOLO_SHA256},
        )
    ],
}
CASES = [spec for implementation in sorted(SPECS) for spec in SPECS[implementation]]

# (width, height): below, at and around MTCNN's 20 px minimum; strips that are long on one side;
# a 3000x20 strip that max_side (2048) shrinks to 14 px high.
SIZES = [(1, 1), (8, 8), (13, 13), (19, 19), (20, 20), (4000, 16), (16, 3000), (3000, 20)]


def test_every_implementation_is_covered():
    assert set(SPECS) == set(IMPLEMENTATIONS)


@pytest.fixture(scope="module")
def detectors(tmp_path_factory) -> dict[str, Detector]:
    """One loaded detector per spec, made by the registry's own factories."""
    model = tmp_path_factory.mktemp("tiny-yolo") / f"{TINY_YOLO_SHA256}.onnx"
    model.write_bytes(TINY_YOLO)
    before = engines.artifact_source
    engines.artifact_source = {TINY_YOLO_SHA256: model}.__getitem__
    try:
        return {spec.id: IMPLEMENTATIONS[spec.implementation](spec, "cpu") for spec in CASES}
    finally:
        engines.artifact_source = before


def make_image(kind: str, width: int, height: int) -> Image.Image:
    if kind == "flat":
        return Image.new("RGB", (width, height), (128, 96, 64))
    rng = np.random.default_rng(width * 100_003 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("kind", ["flat", "noise"])
@pytest.mark.parametrize("spec", CASES, ids=[spec.id for spec in CASES])
def test_tiny_and_thin_images_give_a_list_never_an_error(detectors, spec, kind, size):
    detector = detectors[spec.id]
    image = make_image(kind, *size)
    detections = detector.detect(image)
    assert isinstance(detections, list)
    assert all(isinstance(d, Detection) for d in detections)
    if spec.implementation == "stub" and kind == "noise":
        # The stub reports a "face" on any image that is not one flat colour, whatever its size.
        assert len(detections) <= 1
    elif spec.implementation == "yolo-onnx":
        # The small model answers its fixed table on any input: letterboxed into 64 x 64 and
        # mapped back, the boxes must still lie inside the image (checked below).
        assert {d.label for d in detections} <= {"person", "traffic_light", "dog"}
    else:
        assert detections == []
    for d in detections:
        assert 0 <= d.x1 <= d.x2 <= image.width and 0 <= d.y1 <= d.y2 <= image.height


# --- The rule itself ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["mtcnn@1.0.0", "mtcnn@1.1.0"])
def test_mtcnn_smallest_input_is_its_smallest_face(detectors, version):
    """facenet-pytorch's first pyramid level needs min(h, w) * 12 / min_face_size >= 12."""
    assert detectors[version].min_input_side == 20


@pytest.mark.parametrize("min_face_size", [12, 13.5, 20, 33, 40])
def test_mtcnn_smallest_input_follows_its_settings(min_face_size, monkeypatch):
    from detection.mtcnn import MTCNNDetector

    base = SPECS["mtcnn"][0]
    spec = dataclasses.replace(base, label=f"mfs{min_face_size}", settings={**base.settings, "min_face_size": min_face_size})
    detector = MTCNNDetector(spec=spec)
    side = detector.min_input_side
    m = 12.0 / min_face_size
    assert side * m >= 12 and (side - 1) * m < 12  # the smallest side with a pyramid level
    # At the limit MTCNN itself runs (and copes); one pixel less, it is not asked.
    calls = _count_predicts(detector, monkeypatch)
    assert detector.detect(make_image("noise", side, side + 5)) == []
    assert len(calls) == 1
    assert detector.detect(make_image("noise", side - 1, side + 5)) == []
    assert len(calls) == 1


def _count_predicts(detector: Detector, monkeypatch) -> list:
    calls = []
    original = detector.predict

    def predict(inputs):
        calls.append(inputs)
        return original(inputs)

    monkeypatch.setattr(detector, "predict", predict)
    return calls


@pytest.mark.parametrize(
    "size, searched",
    [
        ((19, 500), False),
        ((20, 500), True),
        # max_side 2048: 40x5000 becomes 16x2048 and 60x5000 becomes 25x2048 before detection.
        ((40, 5000), False),
        ((60, 5000), True),
    ],
)
def test_the_check_is_made_on_the_preprocessed_input(detectors, monkeypatch, size, searched):
    detector = detectors["mtcnn@1.0.0"]
    calls = _count_predicts(detector, monkeypatch)
    assert detector.detect(make_image("noise", *size)) == []
    assert bool(calls) is searched


def test_the_default_searches_any_size(detectors, monkeypatch):
    """An engine that declares no minimum is given even a 1x1 image."""
    detector = detectors["stub@0.0.0"]
    assert detector.min_input_side == 1
    calls = _count_predicts(detector, monkeypatch)
    detector.detect(Image.new("RGB", (1, 1)))
    assert len(calls) == 1


def test_an_engine_with_a_minimum_is_not_called_below_it():
    """The rule belongs to the interface: a subclass only states its minimum."""

    class Picky(Detector):
        name = "picky"
        min_input_side = 32

        def preprocess(self, image):
            return np.asarray(image)

        def predict(self, inputs):
            raise AssertionError("predict must not be called below min_input_side")

        def postprocess(self, raw, inputs):
            return []

    picky = Picky(spec=DetectorSpec(id="picky@1", label="picky@1", implementation="picky", settings={}, weights={}))
    assert picky.detect(Image.new("RGB", (31, 400))) == []
    with pytest.raises(AssertionError):
        picky.detect(Image.new("RGB", (32, 32)))
