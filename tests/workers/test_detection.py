"""The MTCNN detector on real photos, in-process (no broker), and the per-process registry."""

import io

import pytest
from PIL import Image

from api.imaging import image_decode_rgb
from tests.conftest import TESTDATA, photo_bytes
from tests.imagevariants import variants
from workers.detection import registry
from workers.detection.mtcnn import MTCNNDetector, sha256_file, weights_dir


@pytest.fixture(scope="module")
def mtcnn():
    return MTCNNDetector(version="1.0.0", settings={})


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
    detector = MTCNNDetector(version="test", settings={"max_side": 256})
    big = Image.open(TESTDATA / "astronaut_1face.png").convert("RGB").resize((1024, 1024))
    (face,) = detector.detect(big)
    assert [face.x1, face.y1, face.x2, face.y2] == pytest.approx([362, 124, 535, 344], abs=16)


def test_version_label_names_the_settings():
    """Different settings, different model_version."""
    a = MTCNNDetector(version="1.0.0", settings={})
    b = MTCNNDetector(version="1.0.0", settings={"min_confidence": 0.9})
    assert a.model_version.startswith("mtcnn@1.0.0+settings.")
    assert a.model_version != b.model_version


def test_weights_are_the_files_shipped_in_the_wheel(mtcnn):
    """Loaded from facenet-pytorch's package data, hashed."""
    assert set(mtcnn.weights) == {"pnet.pt", "rnet.pt", "onet.pt"}
    assert mtcnn.weights["pnet.pt"] == sha256_file(weights_dir() / "pnet.pt")


def test_registry_loads_each_version_once_per_process(settings):
    """get_detector caches: a second call returns the same object without loading."""
    registry.clear_cache()
    before = registry.load_count
    first = registry.get_detector("stub@0.0.0")
    second = registry.get_detector("stub@0.0.0")
    assert first is second and registry.load_count == before + 1


def test_unknown_version_is_refused():
    with pytest.raises(registry.UnknownDetector):
        registry.get_detector("mtcnn@0.0.0-nope")


def test_cuda_must_be_available_when_asked_for():
    """DETECTOR_DEVICE=cuda on a machine without CUDA is a clear error, not a silent CPU run."""
    import torch

    from workers.detection.mtcnn import DetectorUnavailable

    if torch.cuda.is_available():
        detector = MTCNNDetector(version="1.0.0", settings={}, device="cuda")
        assert len(detector.detect(image_decode_rgb(photo_bytes("astronaut_1face.png")))) == 1
    else:
        with pytest.raises(DetectorUnavailable):
            MTCNNDetector(version="1.0.0", settings={}, device="cuda")


def test_detect_refuses_non_rgb(mtcnn):
    with pytest.raises(ValueError):
        mtcnn.detect(Image.new("L", (10, 10)))
