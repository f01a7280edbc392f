"""OpenCV's Haar cascades (cascade@1.0.0: cat faces) on the real test photos, in-process.

The boxes were checked by eye once (2026-11-23): on chelsea_cat.png the cat box lies on the cat's
muzzle, right of the nose. The regions below are where that photo's cat face and muzzle are.
"""

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from detection import Detection, DetectorSpec, DetectorUnavailable, engines
from detection.base import spec_from_file
from detection.cascade import CascadeDetector, confidence_from_level_weight, nms
from detection.weights import WeightsMismatch, weights_dir
from jobs.imaging import image_decode_rgb
from tests.conftest import ROOT, photo_bytes

VERSION_FILE = ROOT / "detector_versions" / "cascade@1.0.0.json"
LABELS = set(json.loads(VERSION_FILE.read_text())["labels"])

# chelsea_cat.png (451x300), by eye: the whole cat face (its ears are cut off by the top edge),
# the muzzle (nose, mouth and whisker pads), and the tip of the nose.
CAT_FACE = (0, 0, 410, 300)
MUZZLE = (200, 180, 340, 300)
NOSE = (262, 240)


def spec(**settings) -> DetectorSpec:
    shipped = spec_from_file(VERSION_FILE)
    return dataclasses.replace(shipped, label="cascade@1.0.0+test", settings={**shipped.settings, **settings})


def inside(det: Detection, region: tuple[float, float, float, float], scale: float = 1.0) -> bool:
    x1, y1, x2, y2 = (v * scale for v in region)
    return x1 <= det.x1 and y1 <= det.y1 and det.x2 <= x2 and det.y2 <= y2


@pytest.fixture(scope="module")
def cascade() -> CascadeDetector:
    return CascadeDetector(spec=spec(), threads=1)


@pytest.fixture(scope="module")
def found(cascade, manifest) -> dict[str, list[Detection]]:
    """Every test photo through the shipped version, decoded as the worker decodes an upload."""
    return {entry["file"]: cascade.detect(image_decode_rgb(photo_bytes(entry["file"]))) for entry in manifest}


def test_the_cat_is_found_on_its_muzzle(found):
    """One cat box on chelsea, inside the cat's face, on the muzzle right of the nose."""
    (cat,) = found["chelsea_cat.png"]
    assert cat.label == "cat" and cat.landmarks == {}
    assert inside(cat, CAT_FACE) and inside(cat, MUZZLE)
    assert [cat.x1, cat.y1, cat.x2, cat.y2] == pytest.approx([269, 210, 328, 269], abs=6)
    assert cat.confidence == pytest.approx(0.684, abs=0.02)


@pytest.mark.parametrize(
    "photo",
    ["coffee.png", "gravel_texture.png", "astronaut_1face.png", "cameraman_profile_1face.png", "grace_hopper_1face.jpg", "obama_1face.jpg"],
)
def test_no_cat_elsewhere(found, photo):
    """A cup, a texture and four people: nothing (the people are no cats, and the version has no
    person class: OpenCV's body cascades found none of them)."""
    assert found[photo] == []


def test_labels_and_confidences_are_in_range(found, cascade):
    assert cascade.labels == sorted(LABELS) == sorted(spec().settings["classes"])
    for detections in found.values():
        for det in detections:
            assert det.label in LABELS
            assert 0.0 <= det.confidence <= 1.0 and det.x1 < det.x2 and det.y1 < det.y2


def test_the_same_photo_gives_the_same_boxes(cascade):
    image = image_decode_rgb(photo_bytes("chelsea_cat.png"))
    assert cascade.detect(image) == cascade.detect(image)


def test_two_threads_give_what_one_gives(found):
    """OpenCV's threads split the scales among them; the grouping and the sort do not depend on
    the order they report in. The thread count is process-wide: restored afterwards."""
    import cv2

    before = cv2.getNumThreads()
    try:
        two = CascadeDetector(spec=spec(), threads=2)
        assert cv2.getNumThreads() == 2
        assert two.detect(image_decode_rgb(photo_bytes("chelsea_cat.png"))) == found["chelsea_cat.png"]
    finally:
        cv2.setNumThreads(before)


def test_large_photos_are_downscaled_and_boxes_scaled_back(cascade):
    """chelsea at 3x (1353x900) is searched at 1024x681 (max_side); the box comes back in the
    large photo's pixels, on the muzzle, around the nose."""
    image = image_decode_rgb(photo_bytes("chelsea_cat.png"))
    big = image.resize((image.width * 3, image.height * 3), Image.Resampling.LANCZOS)
    detections = cascade.detect(big)
    assert detections and all(d.label == "cat" and inside(d, CAT_FACE, scale=3) for d in detections)
    best = detections[0]
    assert inside(best, MUZZLE, scale=3)
    centre = ((best.x1 + best.x2) / 2, (best.y1 + best.y2) / 2)
    assert centre == pytest.approx((NOSE[0] * 3, NOSE[1] * 3), abs=25 * 3)


SIZES = [(1, 1), (8, 8), (31, 31), (32, 32), (33, 33), (4000, 16), (16, 3000), (3000, 20), (64, 4000), (4000, 3000)]


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("kind", ["flat", "noise"])
def test_odd_sizes_give_a_list_never_an_error(cascade, kind, size):
    width, height = size
    if kind == "flat":
        image = Image.new("RGB", size, (128, 96, 64))
    else:
        rng = np.random.default_rng(width * 100_003 + height)
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    detections = cascade.detect(image)
    assert isinstance(detections, list) and all(isinstance(d, Detection) for d in detections)
    for det in detections:
        assert 0 <= det.x1 < det.x2 <= width and 0 <= det.y1 < det.y2 <= height


def test_below_the_smallest_box_nothing_is_searched(cascade, monkeypatch):
    """min_input_side: the smallest box any class looks for (cat: min_size 32)."""
    assert cascade.min_input_side == 32
    calls = []
    original = cascade.predict
    monkeypatch.setattr(cascade, "predict", lambda inputs: calls.append(inputs) or original(inputs))
    cascade.detect(Image.new("RGB", (31, 500)))
    assert calls == []
    cascade.detect(Image.new("RGB", (32, 500)))
    assert len(calls) == 1


def test_a_tampered_checksum_is_refused():
    bad = spec()
    bad = dataclasses.replace(bad, weights={name: "0" * 64 for name in bad.weights})
    with pytest.raises(WeightsMismatch, match="sha256"):
        CascadeDetector(spec=bad)


def test_a_cascade_file_the_version_does_not_register_is_refused():
    shipped = spec()
    classes = {"cat": {**shipped.settings["classes"]["cat"], "file": "haarcascade_frontalcatface.xml"}}
    with pytest.raises(WeightsMismatch, match="does not register haarcascade_frontalcatface.xml"):
        CascadeDetector(spec=dataclasses.replace(shipped, settings={**shipped.settings, "classes": classes}))


def test_the_weights_are_the_wheels_files():
    folder = weights_dir("cascade")
    assert folder.name == "data" and folder.parent.name == "cv2"
    assert all((folder / name).is_file() for name in spec().weights)


def test_cuda_is_refused():
    with pytest.raises(DetectorUnavailable, match="CPU only"):
        CascadeDetector(spec=spec(), device="cuda")


def test_the_registry_builds_it_with_the_workers_thread_count(monkeypatch):
    import cv2

    before = cv2.getNumThreads()
    monkeypatch.setattr(engines, "threads", 1)
    try:
        detector = engines.IMPLEMENTATIONS["cascade"](spec(), "cpu")
        assert isinstance(detector, CascadeDetector) and detector.threads == 1 and cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)


def test_importing_it_does_not_import_opencv():
    """The web process imports the registry (and finds weight folders) without paying for cv2."""
    code = (
        "import sys; import detection.cascade; from detection.weights import weights_dir; "
        "weights_dir('cascade'); print('cv2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


# --- Scores and suppression ------------------------------------------------------------------------


def test_the_score_is_monotone_and_bounded():
    weights = [-1000.0, -5.0, -1.0, -0.1, 0.0, 0.1, 1.0, 5.0, 1000.0]
    scores = [confidence_from_level_weight(w) for w in weights]
    assert scores == sorted(scores) and all(0.0 <= s <= 1.0 for s in scores)
    assert confidence_from_level_weight(0.0) == 0.5
    assert confidence_from_level_weight(1.0) == pytest.approx(1 / (1 + math.exp(-2)))


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = [(0, 0, 10, 10), (1, 1, 11, 11), (50, 50, 60, 60), (0, 0, 10, 10)]
    assert nms(boxes, [0.5, 0.9, 0.7, 0.5], iou=0.3) == [1, 2]


def test_suppression_is_within_a_class(cascade):
    """The same box as a cat and as another class: both stay; two overlapping cats: one."""
    inputs = {"gray": np.zeros((100, 100), dtype=np.uint8), "scale": 0.5, "size": (200, 200)}
    raw = {
        "cat": [(10.0, 10.0, 50.0, 50.0, 1.0), (12.0, 12.0, 52.0, 52.0, 0.5)],
        "person": [(10.0, 10.0, 50.0, 50.0, 0.2), (-20.0, 60.0, 30.0, 130.0, 0.0)],
    }
    detections = cascade.postprocess(raw, inputs)
    assert [(d.label, d.x1, d.y1, d.x2, d.y2) for d in detections] == [
        ("cat", 20.0, 20.0, 100.0, 100.0),  # scaled back by 1 / 0.5
        ("person", 20.0, 20.0, 100.0, 100.0),
        ("person", 0.0, 120.0, 60.0, 200.0),  # clamped to the image before scaling back
    ]
    assert [d.confidence for d in detections] == sorted((d.confidence for d in detections), reverse=True)


# --- The registry -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_version_file_registers_with_its_record():
    from registry import services as registry
    from registry.models import DetectorVersion

    version = DetectorVersion.objects.get(id="cascade@1.0.0")  # registered by the bootstrap
    assert version.implementation == "cascade" and version.labels == ["cat"]
    assert {w["file"] for w in version.weights} == {"haarcascade_frontalcatface_extended.xml"}
    assert version.packages == {"opencv-python-headless": "4.14.0.94"}
    assert version.label.startswith("cascade@1.0.0+weights.")
    assert registry.detector_version_register(path=VERSION_FILE) == (version, False)  # idempotent
    registry.detector_version_verify_weights(version)

    detector = engines.IMPLEMENTATIONS["cascade"](registry.detector_spec(version), "cpu")
    assert detector.model_version == version.label
    (cat,) = detector.detect(image_decode_rgb(photo_bytes("chelsea_cat.png")))
    assert cat.label == "cat"


@pytest.mark.django_db
def test_a_tampered_checksum_is_refused_at_registration(tmp_path):
    from registry import services as registry
    from registry.models import DetectorVersion

    data = json.loads(VERSION_FILE.read_text())
    data["version"] = "9.0.0"
    data["weights"][0]["sha256"] = "0" * 64
    path = tmp_path / "cascade@9.0.0.json"
    path.write_text(json.dumps(data))
    with pytest.raises(registry.RegistryError, match="sha256"):
        registry.detector_version_register(path=path)
    assert not DetectorVersion.objects.filter(id="cascade@9.0.0").exists()
