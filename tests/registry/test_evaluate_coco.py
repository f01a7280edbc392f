"""detector_evaluate on a labelled set in COCO format (images + annotations JSON), scored by
faster-coco-eval: mAP@0.5, mAP@0.5:0.95, per-label precision and recall, stored on the version
and used by the rollouts' quality gate.

The sets are made here from the test photos, with MTCNN's reference boxes of the photos manifest
as the "drawn" faces: so what mtcnn@1.1.0 scores on them is known by hand (its boxes lie on them).
"""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from registry.coco import coco_load
from registry.models import DetectorVersion
from tests.conftest import TESTDATA

pytestmark = [pytest.mark.django_db]

FACE_PHOTOS = ["astronaut_1face.png", "grace_hopper_1face.jpg", "obama_1face.jpg", "cameraman_profile_1face.png"]
VERSION = "mtcnn@1.1.0"


def manifest() -> dict[str, dict]:
    return {e["file"]: e for e in json.loads((TESTDATA / "manifest.json").read_text())}


def coco_set(tmp_path, *, photos=(*FACE_PHOTOS, "coffee.png"), unlabelled=(), extra=None, edit=None):
    """A COCO annotations file over tests/data/photos: category "Face" with each photo's real face
    (MTCNN's first reference box: obama's second is its background false positive) except on the
    ``unlabelled`` photos, and a "person" category the face models do not return."""
    entries = manifest()
    images, annotations = [], []
    for i, name in enumerate(photos, start=1):
        entry = entries[name]
        images.append({"id": i, "file_name": name, "width": entry["width"], "height": entry["height"]})
        if entry["mtcnn_boxes_xyxy_default_settings"] and name not in unlabelled:
            x1, y1, x2, y2 = entry["mtcnn_boxes_xyxy_default_settings"][0]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    # The astronaut as a whole person: a label of the set that no face model returns.
    annotations.append({"id": len(annotations) + 1, "image_id": 1, "category_id": 2, "bbox": [20, 10, 480, 500], "iscrowd": 0})
    data = {
        "images": images,
        "annotations": annotations + list(extra or []),
        "categories": [{"id": 1, "name": "Face"}, {"id": 2, "name": "person"}],
    }
    if edit:
        edit(data)
    path = tmp_path / "faces-coco.json"
    path.write_text(json.dumps(data))
    return path


def evaluate(version: str, annotations, *args: str) -> tuple[dict, str]:
    out = StringIO()
    call_command("detector_evaluate", version, "--coco", str(annotations), "--images", str(TESTDATA), *args, stdout=out)
    return DetectorVersion.objects.get(id=version).evaluation, out.getvalue()


def test_a_version_on_its_own_boxes_scores_one(tmp_path):
    """Every face found on a box drawn where it lies (IoU > 0.95), none extra: mAP 1 at every IoU."""
    result, printed = evaluate(VERSION, coco_set(tmp_path))
    assert result["labels"]["scoring"] == "coco" and result["labels"]["tag"] == "faces-coco"
    assert result["library"] == "faster-coco-eval 1.8.0"
    assert (result["map_50"], result["map_50_95"]) == (1.0, 1.0)
    face = result["per_label"]["face"]
    assert (face["annotations"], face["detections"], face["precision"], face["recall"]) == (4, 4, 1.0, 1.0)
    assert (face["ap_50"], face["ap_50_95"]) == (1.0, 1.0)
    assert result["labels_not_scored"] == ["person"]
    assert result["photos"] == 5 and result["f1"] == 1.0
    assert "mAP@0.5 1.000  mAP@0.5:0.95 1.000" in printed and "not scored (the version does not return them): person" in printed


def test_an_unlabelled_face_is_a_false_positive_ranked_by_its_score(tmp_path):
    """Grace Hopper's face left out of the labels: her detection (score 0.9998, second of four)
    is a false positive. By hand, COCO's 101-point interpolated AP: precision 1 up to recall 1/3
    (34 points), then at most 3/4 (67 points): (34 + 67 * 0.75) / 101; at the library's best-F1
    threshold (all four detections) precision 3/4 and recall 1."""
    result, _ = evaluate(VERSION, coco_set(tmp_path, unlabelled=("grace_hopper_1face.jpg",)))
    assert result["map_50"] == pytest.approx((34 + 67 * 0.75) / 101)
    assert result["map_50_95"] == pytest.approx((34 + 67 * 0.75) / 101)  # the true ones lie within IoU 0.95
    face = result["per_label"]["face"]
    assert (face["annotations"], face["detections"]) == (3, 4)
    assert face["precision"] == pytest.approx(0.75) and face["recall"] == 1.0
    assert result["f1"] == pytest.approx(2 * 0.75 / 1.75)


def test_a_loose_box_counts_at_0_5_not_at_0_95(tmp_path):
    """Each drawn face grown 1.38 times around its centre (IoU 1 / 1.38² = 0.525 with the found
    box, midway between the thresholds 0.5 and 0.55): a hit at IoU 0.5 only: mAP@0.5 1,
    mAP@0.5:0.95 one tenth (one threshold of ten)."""
    g = 1.38

    def grow(data):
        for ann in data["annotations"]:
            if ann["category_id"] == 1:
                x, y, w, h = ann["bbox"]
                ann["bbox"] = [x - (g - 1) / 2 * w, y - (g - 1) / 2 * h, g * w, g * h]
                ann["area"] = g * g * w * h

    result, _ = evaluate(VERSION, coco_set(tmp_path, edit=grow))
    assert result["map_50"] == 1.0
    assert result["map_50_95"] == pytest.approx(0.1)


def test_the_set_is_pinned_by_the_annotations_and_the_images(tmp_path):
    """The annotations' sha256 and a digest of every image's bytes are recorded."""
    import hashlib

    path = coco_set(tmp_path)
    loaded = coco_load(annotations=path, images=TESTDATA)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.categories == {1: "face", 2: "person"} and loaded.names == {1: "Face", 2: "person"}
    expected = "\n".join(sorted(f"{e['file']}:{e['sha256']}" for e in manifest().values() if e["file"] in (*FACE_PHOTOS, "coffee.png")))
    assert loaded.images_sha256 == hashlib.sha256(expected.encode()).hexdigest()


def _wrong_size(data):
    data["images"][0]["width"] = 500


def _unknown_category(data):
    data["annotations"][0]["category_id"] = 9


def _bad_box(data):
    data["annotations"][0]["bbox"] = [1, 2, 0, 4]


def _missing_image(data):
    data["images"][0]["file_name"] = "nowhere.png"


def _absolute_path(data):
    data["images"][0]["file_name"] = str(TESTDATA / "coffee.png")


def _not_coco(data):
    data.pop("categories")


@pytest.mark.parametrize(
    "edit, message",
    [
        (_wrong_size, "the annotations say 500x512, the image is 512x512"),
        (_unknown_category, "category_id 9 is not in"),
        (_bad_box, "positive width and height"),
        (_missing_image, "no such image"),
        (_absolute_path, "relative to the image folder"),
        (_not_coco, '"images", "annotations" and "categories"'),
    ],
)
def test_a_bad_set_is_refused_and_nothing_is_stored(tmp_path, edit, message):
    """The problem named; the version keeps no evaluation."""
    with pytest.raises(CommandError, match=message):
        evaluate(VERSION, coco_set(tmp_path, edit=edit))
    assert DetectorVersion.objects.get(id=VERSION).evaluation is None


def test_a_version_that_returns_none_of_the_labels_is_refused(tmp_path):
    """A cat model on faces and persons: nothing to score, said, nothing stored."""
    with pytest.raises(CommandError, match="returns none of the set's labels"):
        evaluate("cascade@1.0.0", coco_set(tmp_path, photos=("coffee.png",)))
    assert DetectorVersion.objects.get(id="cascade@1.0.0").evaluation is None


def test_labels_and_coco_are_one_or_the_other(tmp_path):
    with pytest.raises(CommandError):
        call_command("detector_evaluate", VERSION, "--labels", str(tmp_path), "--coco", str(tmp_path / "x.json"))
    with pytest.raises(CommandError, match="--images goes with --coco"):
        call_command("detector_evaluate", VERSION, "--labels", str(tmp_path), "--images", str(tmp_path))


# --- The quality gate ---------------------------------------------------------------------------


def _store(version_id: str, **figures) -> None:
    DetectorVersion.objects.filter(id=version_id).update(evaluation={"f1": 0.9, **figures})


def test_the_quality_gate_judges_map_when_both_have_it():
    """Two COCO evaluations on one set: mAP@0.5:0.95 decides (F1 equal), the figures recorded."""
    from core.errors import DomainError
    from rollouts.services import rollout_start

    same = {"tag": "faces-coco", "sha256": "a" * 64, "scoring": "coco"}
    _store("mtcnn@1.0.0", map_50_95=0.80, labels=same)
    _store("mtcnn@1.1.0", map_50_95=0.70, labels=same)
    with pytest.raises(DomainError, match="mAP@0.5:0.95 0.700, below mtcnn@1.0.0's 0.800") as refused:
        rollout_start(candidate="mtcnn@1.1.0", mode="shadow", actor="test", quality_drop_max=0.05)
    assert refused.value.code == "quality_gate"
    rollout = rollout_start(candidate="mtcnn@1.1.0", mode="shadow", actor="test", quality_drop_max=0.15)
    assert rollout.events.get(action="start").figures == {
        "metric": "map_50_95",
        "baseline_map_50_95": 0.80,
        "candidate_map_50_95": 0.70,
        "labels": "faces-coco",
        "quality_drop_max": 0.15,
    }


def test_the_quality_gate_refuses_maps_of_different_sets():
    """mAP on one set says nothing against mAP on another."""
    from core.errors import DomainError
    from rollouts.services import rollout_start

    _store("mtcnn@1.0.0", map_50_95=0.80, labels={"tag": "a", "sha256": "a" * 64})
    _store("mtcnn@1.1.0", map_50_95=0.90, labels={"tag": "b", "sha256": "b" * 64})
    with pytest.raises(DomainError, match="different COCO label sets"):
        rollout_start(candidate="mtcnn@1.1.0", mode="shadow", actor="test", quality_drop_max=0.05)
