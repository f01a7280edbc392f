"""The MTCNN detector on real photos, in-process (no broker), and the per-process cache of loaded versions."""

import dataclasses

import pytest
from PIL import Image

from detection import DetectorSpec, engines
from detection.base import spec_from_file
from detection.mtcnn import MTCNNDetector
from detection.weights import WeightsMismatch
from jobs.imaging import image_decode_rgb
from tests.conftest import ROOT, TESTDATA, photo_bytes
from tests.imagevariants import variants

VERSIONS = ROOT / "detector_versions"


def spec(version: str = "mtcnn@1.0.0", **settings) -> DetectorSpec:
    """The spec of a shipped version file, with settings overridden."""
    shipped = spec_from_file(VERSIONS / f"{version}.json")
    return dataclasses.replace(shipped, label=f"{version}+test", settings={**shipped.settings, **settings})


@pytest.fixture(scope="module")
def mtcnn():
    return MTCNNDetector(spec=spec())


def test_detector_matches_facenet_pytorch_on_every_test_photo(mtcnn, manifest):
    """Boxes and scores agree with the manifest's MTCNN reference run (default settings)."""
    for entry in manifest:
        detections = mtcnn.detect(image_decode_rgb(photo_bytes(entry["file"])))
        expected = entry["mtcnn_boxes_xyxy_default_settings"]
        assert len(detections) == len(expected), entry["file"]
        for det, box, prob in zip(detections, expected, entry["mtcnn_probs"]):
            assert [det.x1, det.y1, det.x2, det.y2] == pytest.approx(box, abs=0.5), entry["file"]
            assert det.confidence == pytest.approx(prob, abs=1e-3)
            assert set(det.landmarks) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}


def test_the_same_photo_gives_the_same_faces(mtcnn):
    """Deterministic on CPU: two runs, identical output."""
    image = image_decode_rgb(photo_bytes("obama_1face.jpg"))
    assert mtcnn.detect(image) == mtcnn.detect(image)


@pytest.mark.parametrize("label", sorted(variants("grace_hopper_1face.jpg")))
def test_odd_encodings_decode_to_the_same_face(mtcnn, label):
    """Every odd encoding decodes upright to RGB and still has its one face."""
    data, _ = variants("grace_hopper_1face.jpg")[label]
    image = image_decode_rgb(data)
    assert image.mode == "RGB" and image.size == (512, 600)
    detections = mtcnn.detect(image)
    assert len(detections) == 1
    assert detections[0].x1 == pytest.approx(174.4, abs=12) and detections[0].y1 == pytest.approx(119.6, abs=12)


def test_large_photos_are_downscaled_and_boxes_scaled_back():
    """max_side bounds the work; the boxes come back in the original's pixels."""
    detector = MTCNNDetector(spec=spec(max_side=256))
    big = Image.open(TESTDATA / "astronaut_1face.png").convert("RGB").resize((1024, 1024))
    (face,) = detector.detect(big)
    assert [face.x1, face.y1, face.x2, face.y2] == pytest.approx([362, 124, 535, 344], abs=16)


def test_tuned_version_drops_the_false_positive_and_keeps_every_face(manifest):
    """mtcnn@1.1.0 (min_confidence 0.9): the human count on every test photo."""
    tuned = MTCNNDetector(spec=spec("mtcnn@1.1.0"))
    for entry in manifest:
        assert len(tuned.detect(image_decode_rgb(photo_bytes(entry["file"])))) == entry["faces"], entry["file"]


def test_weights_that_do_not_match_are_refused():
    """A registered checksum that differs from the file on disk: the detector is not loaded."""
    bad = spec()
    bad = dataclasses.replace(bad, weights={**bad.weights, "pnet.pt": "0" * 64})
    with pytest.raises(WeightsMismatch):
        MTCNNDetector(spec=bad)


def test_registry_loads_each_version_once_per_process():
    """get_detector caches: a second call returns the same object without loading."""
    stub = DetectorSpec(id="stub@0.0.0", label="stub@0.0.0+x", implementation="stub", settings={}, weights={})
    engines.clear_cache()
    before = engines.load_count
    first = engines.get_detector(stub)
    second = engines.get_detector(stub)
    assert first is second and engines.load_count == before + 1


def test_unknown_implementation_is_refused():
    with pytest.raises(engines.UnknownDetector):
        engines.get_detector(DetectorSpec(id="x@1.0.0", label="x", implementation="nope", settings={}, weights={}))


def test_cuda_must_be_available_when_asked_for():
    """DETECTOR_DEVICE=cuda on a machine without CUDA is a clear error, not a silent CPU run."""
    import torch

    from detection.mtcnn import DetectorUnavailable

    if torch.cuda.is_available():
        detector = MTCNNDetector(spec=spec(), device="cuda")
        assert len(detector.detect(image_decode_rgb(photo_bytes("astronaut_1face.png")))) == 1
    else:
        with pytest.raises(DetectorUnavailable):
            MTCNNDetector(spec=spec(), device="cuda")


def test_detect_refuses_non_rgb(mtcnn):
    with pytest.raises(ValueError):
        mtcnn.detect(Image.new("L", (10, 10)))
