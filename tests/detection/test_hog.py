"""OpenCV's HOG people detector (hog@1.0.0: label person) on the real test photos and on a drawn
standing figure, in-process.

The test photos hold four people, all portraits or half-length shots; the detector was trained on
whole, upright pedestrians, and finds none of them (docs/models.md says so). What it is held to:
no person on any test photo at the shipped threshold, the false positive that threshold removes,
a standing figure found around it, the same boxes as OpenCV called directly, and its weights (the
coefficients compiled into OpenCV) checked like a file's.
"""

import dataclasses
import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from detection import Detection, DetectorSpec, DetectorUnavailable, engines
from detection.base import spec_from_file
from detection.hog import WEIGHT_NAME, HogDetector, confidence_from_weight, default_people_coefficients, nms
from detection.weights import WeightsMismatch, verify_weights
from jobs.imaging import image_decode_rgb
from tests.conftest import ROOT, photo_bytes

VERSION_FILE = ROOT / "detector_versions" / "hog@1.0.0.json"
PHOTOS = [
    "astronaut_1face.png",
    "cameraman_profile_1face.png",
    "grace_hopper_1face.jpg",
    "obama_1face.jpg",
    "chelsea_cat.png",
    "coffee.png",
    "gravel_texture.png",
]
# astronaut_1face.png, by eye: the black helmet held at the bottom right.
HELMET = (280, 330, 512, 512)
# The drawn figure's extent (see standing_figure).
FIGURE = (114, 60, 186, 290)


def spec(**settings) -> DetectorSpec:
    shipped = spec_from_file(VERSION_FILE)
    return dataclasses.replace(shipped, label="hog@1.0.0+test", settings={**shipped.settings, **settings})


def standing_figure() -> Image.Image:
    """A dark, upright human silhouette (head, torso, arms, legs: 72 x 230 px) on a light ground,
    softened: the shape the detector was trained on, with nothing else in the picture."""
    image = Image.new("RGB", (400, 400), (200, 200, 200))
    draw = ImageDraw.Draw(image)
    dark = (40, 40, 40)
    draw.ellipse([136, 60, 164, 94], fill=dark)  # head
    draw.rectangle([126, 98, 174, 190], fill=dark)  # torso
    draw.rectangle([114, 100, 124, 185], fill=dark)  # arms
    draw.rectangle([176, 100, 186, 185], fill=dark)
    draw.rectangle([128, 190, 146, 290], fill=dark)  # legs
    draw.rectangle([154, 190, 172, 290], fill=dark)
    return image.filter(ImageFilter.GaussianBlur(2))


@pytest.fixture(scope="module")
def hog() -> HogDetector:
    return HogDetector(spec=spec(), threads=1)


@pytest.fixture(scope="module")
def found(hog) -> dict[str, list[Detection]]:
    """Every test photo through the shipped version, decoded as the worker decodes an upload."""
    return {name: hog.detect(image_decode_rgb(photo_bytes(name))) for name in PHOTOS}


@pytest.mark.parametrize("photo", PHOTOS)
def test_no_person_on_the_test_photos(found, photo):
    """Four portraits (the detector looks for whole standing people), a cat, a cup, gravel: nothing."""
    assert found[photo] == []


def test_the_threshold_removes_the_false_positives():
    """At OpenCV's default hit threshold (0) the astronaut's helmet and the flag behind Obama are
    taken for people (nowhere near their faces); 0.5 drops both."""
    detector = HogDetector(spec=spec(hit_threshold=0.0), threads=1)
    (flag,) = detector.detect(image_decode_rgb(photo_bytes("obama_1face.jpg")))
    assert flag.x1 > 700 and flag.y1 > 700  # the bottom right corner; his face is at x 367-616, y 79-428
    (person,) = detector.detect(image_decode_rgb(photo_bytes("astronaut_1face.png")))
    x1, y1, x2, y2 = HELMET
    assert x1 <= person.x1 and y1 <= person.y1 and person.x2 <= x2 and person.y2 <= y2
    # Its grouped SVM weight is 0.72 (confidence 0.67): at 0.5 too few of its windows pass to make a group.
    assert 0.5 < person.confidence < 0.75


def test_a_standing_figure_is_found_around_it(hog):
    """One person, its box holding the whole figure (HOG's window has a margin around the body)."""
    (person,) = hog.detect(standing_figure())
    assert person.label == "person" and person.landmarks == {}
    x1, y1, x2, y2 = FIGURE
    assert person.x1 <= x1 and person.y1 <= y1 and x2 <= person.x2 and y2 <= person.y2
    # Not much larger than the figure: at most the window's margin on each side.
    assert (person.x2 - person.x1) < 3 * (x2 - x1) and (person.y2 - person.y1) < 1.6 * (y2 - y1)
    assert person.confidence > 0.8


def test_a_large_photo_is_searched_downscaled_and_mapped_back(hog):
    """The figure at four times the size (1600 px, past max_side 1024) is searched downscaled and found at the same place, scaled back."""
    big = standing_figure().resize((1600, 1600), Image.BICUBIC)
    (person,) = hog.detect(big)
    x1, y1, x2, y2 = (v * 4 for v in FIGURE)
    assert person.x1 <= x1 and person.y1 <= y1 and x2 <= person.x2 and y2 <= person.y2
    assert person.x2 <= 1600 and person.y2 <= 1600


def test_boxes_equal_opencv_called_directly(hog):
    """The engine adds nothing to OpenCV's answer but the score and the clamp."""
    import cv2

    reference = cv2.HOGDescriptor()
    reference.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    image = standing_figure()
    s = spec().settings
    boxes, weights = reference.detectMultiScale(
        np.asarray(image),
        hitThreshold=s["hit_threshold"],
        winStride=tuple(s["win_stride"]),
        padding=tuple(s["padding"]),
        scale=s["scale"],
        groupThreshold=s["group_threshold"],
    )
    expected = sorted(
        (
            (float(x), float(y), float(x + w), float(y + h), 1 / (1 + math.exp(-float(wt))))
            for (x, y, w, h), wt in zip(boxes, np.ravel(weights))
        ),
        key=lambda e: -e[4],
    )
    got = [(d.x1, d.y1, min(d.x2, 400.0), min(d.y2, 400.0), d.confidence) for d in hog.detect(image)]
    assert len(expected) == 1
    assert len(got) == 1
    assert got[0] == pytest.approx((expected[0][0], expected[0][1], min(expected[0][2], 400.0), min(expected[0][3], 400.0), expected[0][4]))


# --- Weights compiled into OpenCV -------------------------------------------------------------------


def test_the_registered_checksum_is_that_of_opencvs_coefficients():
    """3781 float32 values (a 3780-value HOG descriptor and the bias), hashed as the version file says."""
    data = default_people_coefficients()
    assert len(data) == 3781 * 4
    assert spec().weights == {WEIGHT_NAME: hashlib.sha256(data).hexdigest()}
    assert verify_weights("hog", spec().weights) == {}


def test_other_coefficients_are_refused():
    """A registered checksum that is not this OpenCV build's: refused before the detector is built."""
    with pytest.raises(WeightsMismatch, match="sha256"):
        HogDetector(spec=dataclasses.replace(spec(), weights={WEIGHT_NAME: "0" * 64}))
    with pytest.raises(WeightsMismatch, match="no weight"):
        verify_weights("hog", {"other.bin": "0" * 64})


def test_checking_the_weights_does_not_import_opencv():
    """The web process checks the active version's weights (for /readyz) without loading cv2: a child computes the digest."""
    code = (
        "import sys; from detection.weights import verify_weights; import json; "
        f"verify_weights('hog', json.loads({json.dumps(json.dumps(spec().weights))})); print('cv2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_cuda_is_refused():
    with pytest.raises(DetectorUnavailable, match="CPU only"):
        HogDetector(spec=spec(), device="cuda")


def test_the_registry_builds_it_with_the_workers_thread_count(monkeypatch):
    import cv2

    before = cv2.getNumThreads()
    monkeypatch.setattr(engines, "threads", 1)
    try:
        detector = engines.IMPLEMENTATIONS["hog"](spec(), "cpu")
        assert isinstance(detector, HogDetector) and detector.threads == 1 and cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)


# --- Scores and suppression ----------------------------------------------------------------------


def test_the_score_is_monotone_and_bounded():
    weights = [-1000.0, -3.0, -0.1, 0.0, 0.1, 1.0, 3.0, 1000.0]
    scores = [confidence_from_weight(w) for w in weights]
    assert scores == sorted(scores) and all(0.0 <= s <= 1.0 for s in scores)
    assert confidence_from_weight(0.0) == 0.5


def test_nested_boxes_are_suppressed_and_clamped(hog):
    """OpenCV's grouping leaves a box inside another: the weaker goes; a box past the edge is clamped."""
    inputs = {"array": np.zeros((200, 100, 3), dtype=np.uint8), "scale": 0.5, "size": (200, 400)}
    raw = [(10.0, 10.0, 74.0, 138.0, 1.5), (12.0, 14.0, 70.0, 130.0, 0.7), (-8.0, 100.0, 56.0, 228.0, 0.6)]
    detections = hog.postprocess(raw, inputs)
    assert [(d.x1, d.y1, d.x2, d.y2) for d in detections] == [(20.0, 20.0, 148.0, 276.0), (0.0, 200.0, 112.0, 400.0)]
    assert nms([(0, 0, 10, 10), (1, 1, 11, 11)], [0.5, 0.9], iou=0.3) == [1]


# --- The registry -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_version_file_registers_with_its_record():
    from registry import services as registry
    from registry.models import DetectorVersion

    version = DetectorVersion.objects.get(id="hog@1.0.0")  # registered by the bootstrap, as `make up` does
    assert version.implementation == "hog" and version.labels == ["person"]
    assert [w["file"] for w in version.weights] == [WEIGHT_NAME]
    assert version.packages == {"opencv-python-headless": "4.14.0.94"}
    assert version.label.startswith("hog@1.0.0+weights.")
    assert registry.detector_version_register(path=VERSION_FILE) == (version, False)  # idempotent
    registry.detector_version_verify_weights(version)
    detector = engines.IMPLEMENTATIONS["hog"](registry.detector_spec(version), "cpu")
    assert detector.model_version == version.label
    assert [d.label for d in detector.detect(standing_figure())] == ["person"]


@pytest.mark.django_db
def test_a_tampered_checksum_is_refused_at_registration(tmp_path):
    from registry import services as registry
    from registry.models import DetectorVersion

    data = json.loads(VERSION_FILE.read_text())
    data["version"] = "9.0.0"
    data["weights"][0]["sha256"] = "0" * 64
    path = tmp_path / "hog@9.0.0.json"
    path.write_text(json.dumps(data))
    with pytest.raises(registry.RegistryError, match="sha256"):
        registry.detector_version_register(path=path)
    assert not DetectorVersion.objects.filter(id="hog@9.0.0").exists()
