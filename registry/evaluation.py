"""Scoring a detector version on a labelled photo set (``manage.py detector_evaluate``).

A label set is a folder with a ``manifest.json``: a list of entries, each naming a photo
(``file``, relative to the folder) and either the face boxes a person drew (``boxes``: [{x, y,
width, height}]) or only how many faces a person counted (``faces``). An optional ``sha256``
pins the photo's bytes, so the manifest's digest pins the photos too.

With boxes, a detection is a true positive when it pairs one to one with a labelled box at IoU
>= 0.5 (detection.compare.match); with counts only, a photo's true positives are
min(found, expected), which cannot tell a right face from a wrong one in the same photo. The
figures are over the whole set: precision, recall and F1 from the summed counts, and the mean
detection time per photo with the detector already loaded and warmed.

A labelled set in COCO format (images and an annotations JSON: what labelling tools export) is
read by registry.coco and scored by faster-coco-eval (``detector_version_evaluate_coco``):
mAP@0.5, mAP@0.5:0.95 and per-label precision and recall.

The photo decoding is the caller's (the worker's decoder lives in jobs/, which the registry may
not import): ``decode`` turns bytes into an RGB image or raises ``PhotoUnreadable``.
"""

import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone
from PIL import Image

from detection import DetectorUnavailable, UnknownDetector, get_detector
from detection.compare import Box, f1, match
from detection.weights import WeightsMismatch, sha256_file

from .coco import CocoError, CocoSet, coco_score
from .models import DetectorVersion
from .services import RegistryError, detector_spec

MANIFEST = "manifest.json"


class EvaluationError(RegistryError):
    """The labels, a photo or the version cannot be evaluated; the message names the problem."""


class PhotoUnreadable(Exception):
    """Raised by a ``decode`` function for bytes that are not a photo it can read."""


@dataclass(frozen=True)
class LabelledPhoto:
    file: str  # as the manifest names it
    path: Path
    faces: int  # how many faces a person counted (the number of boxes when boxes are given)
    boxes: tuple[Box, ...] | None  # None: counted only


@dataclass(frozen=True)
class LabelSet:
    tag: str
    sha256: str  # of manifest.json's bytes
    directory: Path
    photos: tuple[LabelledPhoto, ...]

    @property
    def scoring(self) -> str:
        kinds = {"boxes" if photo.boxes is not None else "counts" for photo in self.photos}
        return kinds.pop() if len(kinds) == 1 else "boxes and counts"


def _number(value: Any) -> bool:
    # bool is an int to Python, never a coordinate to a person.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _box(where: str, raw: Any) -> Box:
    if not isinstance(raw, dict) or not all(_number(raw.get(key)) for key in ("x", "y", "width", "height")):
        raise EvaluationError(f'{where}: a box is {{"x", "y", "width", "height"}} with numbers, not {raw!r}')
    if raw["width"] <= 0 or raw["height"] <= 0:
        raise EvaluationError(f"{where}: a box needs a positive width and height, not {raw!r}")
    return (float(raw["x"]), float(raw["y"]), float(raw["width"]), float(raw["height"]))


def _photo(directory: Path, index: int, entry: Any) -> LabelledPhoto:
    where = f"{MANIFEST} entry {index}"
    if not isinstance(entry, dict):
        raise EvaluationError(f'{where}: an entry is an object with "file" and "boxes" or "faces"')
    name = entry.get("file")
    if not isinstance(name, str) or not name:
        raise EvaluationError(f'{where}: "file" (the photo\'s path, relative to the folder) is missing')
    where = f"{MANIFEST} entry {index} ({name})"
    if Path(name).is_absolute():
        # A label set must travel with its photos: paths are relative to its folder.
        raise EvaluationError(f'{where}: "file" must be relative to the label folder, not absolute')
    path = (directory / name).resolve()
    if not path.is_file():
        raise EvaluationError(f"{where}: no such photo ({path})")
    if "sha256" in entry and entry["sha256"] != sha256_file(path):
        raise EvaluationError(f"{where}: the photo's sha256 is not the one the manifest records")

    boxes = None
    if "boxes" in entry:
        if not isinstance(entry["boxes"], list):
            raise EvaluationError(f'{where}: "boxes" must be a list of {{"x", "y", "width", "height"}}')
        boxes = tuple(_box(where, raw) for raw in entry["boxes"])
    faces = entry.get("faces")
    if faces is None:
        if boxes is None:
            raise EvaluationError(f'{where}: give "boxes" (the faces a person drew) or "faces" (how many)')
        faces = len(boxes)
    elif not isinstance(faces, int) or isinstance(faces, bool) or faces < 0:
        raise EvaluationError(f'{where}: "faces" must be a count (0 or more), not {faces!r}')
    elif boxes is not None and faces != len(boxes):
        raise EvaluationError(f'{where}: "faces" is {faces} but {len(boxes)} boxes are drawn')
    return LabelledPhoto(file=name, path=path, faces=faces, boxes=boxes)


def labels_load(*, directory: Path, tag: str | None = None) -> LabelSet:
    """Read and check a label folder. Raises EvaluationError naming the first problem found."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EvaluationError(f"no label folder {directory}")
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise EvaluationError(f"{directory} has no {MANIFEST}")
    raw = manifest.read_bytes()
    try:
        entries = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{manifest} is not valid JSON: {exc}") from exc
    if not isinstance(entries, list) or not entries:
        raise EvaluationError(f"{manifest} must be a non-empty list of photo entries")
    photos = tuple(_photo(directory, index, entry) for index, entry in enumerate(entries))
    seen = set()
    for photo in photos:
        if photo.path in seen:
            raise EvaluationError(f"{manifest}: {photo.file} is listed twice")
        seen.add(photo.path)
    return LabelSet(
        tag=tag or directory.resolve().name,
        sha256=hashlib.sha256(raw).hexdigest(),
        directory=directory,
        photos=photos,
    )


def true_positives(*, found: list[Box], photo: LabelledPhoto) -> int:
    """The detections that are faces a person labelled: matched boxes, or the smaller count."""
    if photo.boxes is not None:
        return match(found, photo.boxes)
    return min(len(found), photo.faces)


def _clipped(detection, width: int, height: int) -> Box:
    # As a client gets it (jobs.services.faces_from_detections): inside the image. MTCNN's box
    # for a face at the edge runs past it, and a person's box cannot.
    x1, x2 = (min(max(v, 0.0), width) for v in (detection.x1, detection.x2))
    y1, y2 = (min(max(v, 0.0), height) for v in (detection.y1, detection.y2))
    return (x1, y1, x2 - x1, y2 - y1)


def _figures(true_pos: int, found: int, expected: int) -> dict[str, float]:
    # No detection has no false positive, and no labelled face has nothing to miss: both are a
    # perfect 1, as for compare.f1 where two empty answers agree.
    return {
        "precision": true_pos / found if found else 1.0,
        "recall": true_pos / expected if expected else 1.0,
        "f1": f1(true_pos, found, expected),
    }


def detector_version_evaluate(
    *,
    version_id: str,
    labels: LabelSet,
    decode: Callable[[bytes], Image.Image],
    repeat: int = 1,
) -> dict[str, Any]:
    """Detect every photo of ``labels`` with the version, in this process, and score it.

    Photos are decoded before the detector loads (a bad photo costs no model load); the detector
    is loaded and run once untimed, then each photo is detected ``repeat`` times and timed. The
    counts come from the first run (detection is deterministic for a version and an image).
    Returns the evaluation, not stored (detector_version_evaluation_store does that)."""
    if repeat < 1:
        raise EvaluationError(f"repeat must be 1 or more, not {repeat}")
    version = DetectorVersion.objects.filter(id=version_id).first()
    if version is None:
        raise EvaluationError(f"no version {version_id}")
    images = _decode_all([(photo.file, photo.path) for photo in labels.photos], decode)
    detector, answers, timings = _detect_all(version, images, repeat)

    per_photo = []
    for photo, image, detections in zip(labels.photos, images, answers):
        found = [_clipped(d, image.width, image.height) for d in detections]
        per_photo.append(
            {
                "file": photo.file,
                "faces": photo.faces,
                "found": len(found),
                "true_positives": true_positives(found=found, photo=photo),
                "scored_by": "boxes" if photo.boxes is not None else "count",
            }
        )
    true_pos = sum(p["true_positives"] for p in per_photo)
    found_total = sum(p["found"] for p in per_photo)
    faces_total = sum(p["faces"] for p in per_photo)
    return {
        "version": version.id,
        "label": detector.model_version,
        "labels": {"tag": labels.tag, "sha256": labels.sha256, "scoring": labels.scoring},
        "photos": len(per_photo),
        "faces": faces_total,
        "detections": found_total,
        "true_positives": true_pos,
        **_figures(true_pos, found_total, faces_total),
        "latency_ms_mean": statistics.fmean(timings),
        "repeat": repeat,
        "device": settings.DETECTOR_DEVICE,
        "evaluated_at": timezone.now().isoformat(),
        "per_photo": per_photo,
    }


def _decode_all(files: list[tuple[str, Path]], decode: Callable[[bytes], Image.Image]) -> list[Image.Image]:
    # Every photo decoded before the detector loads: a bad photo costs no model load.
    images = []
    for name, path in files:
        try:
            images.append(decode(path.read_bytes()))
        except PhotoUnreadable as exc:
            raise EvaluationError(f"{name}: cannot be decoded: {exc}") from exc
    return images


def _detect_all(version: DetectorVersion, images: list[Image.Image], repeat: int):
    """(detector, each image's detections from its first run, every run's milliseconds)."""
    try:
        detector = get_detector(detector_spec(version), device=settings.DETECTOR_DEVICE)
    except (WeightsMismatch, UnknownDetector, DetectorUnavailable) as exc:
        raise EvaluationError(f"{version.id} cannot be loaded here: {type(exc).__name__}: {exc}") from exc
    # The first detection pays one-off costs (torch's lazy set-up), which a serving worker has
    # long paid: it is not a latency a job would see.
    detector.detect(images[0])
    answers, timings = [], []
    for image in images:
        detections = None
        for _ in range(repeat):
            started = time.perf_counter()
            result = detector.detect(image)
            timings.append((time.perf_counter() - started) * 1000)
            detections = result if detections is None else detections
        answers.append(detections)
    return detector, answers, timings


def detector_version_evaluate_coco(
    *,
    version_id: str,
    coco: CocoSet,
    decode: Callable[[bytes], Image.Image],
    repeat: int = 1,
) -> dict[str, Any]:
    """Detect every image of a COCO set (registry.coco.coco_load) with the version, in this
    process, and score it with faster-coco-eval (registry.coco.coco_score): mAP@0.5,
    mAP@0.5:0.95, precision, recall and F1, and per label. Each decoded image must have the size
    the set declares (else its boxes would be in other pixels). Returns the evaluation, not stored."""
    if repeat < 1:
        raise EvaluationError(f"repeat must be 1 or more, not {repeat}")
    version = DetectorVersion.objects.filter(id=version_id).first()
    if version is None:
        raise EvaluationError(f"no version {version_id}")
    images = _decode_all([(photo.file, photo.path) for photo in coco.images], decode)
    for photo, image in zip(coco.images, images):
        if (image.width, image.height) != (photo.width, photo.height):
            raise EvaluationError(
                f"{photo.file}: the annotations say {photo.width}x{photo.height}, the image is {image.width}x{image.height} "
                "(after its EXIF orientation): its boxes would not fall on it"
            )
    detector, answers, timings = _detect_all(version, images, repeat)
    detections = {}
    for photo, image, found in zip(coco.images, images, answers):
        detections[photo.id] = [(d.label, d.confidence, _clipped(d, image.width, image.height)) for d in found]
    try:
        scores = coco_score(coco, detections, version_labels=list(version.labels))
    except CocoError as exc:
        raise EvaluationError(f"{version_id}: {exc}") from exc
    scored = set(scores["per_label"])
    return {
        "version": version.id,
        "label": detector.model_version,
        "labels": {"tag": coco.tag, "sha256": coco.sha256, "images_sha256": coco.images_sha256, "scoring": "coco"},
        "photos": len(coco.images),
        "annotations": sum(v["annotations"] for v in scores["per_label"].values()),
        "detections": sum(v["detections"] for v in scores["per_label"].values()),
        # The set's labels this version does not return: not scored (its mAP says nothing of them).
        "labels_not_scored": sorted(set(coco.categories.values()) - scored),
        **scores,
        "latency_ms_mean": statistics.fmean(timings),
        "repeat": repeat,
        "device": settings.DETECTOR_DEVICE,
        "evaluated_at": timezone.now().isoformat(),
        "per_photo": [
            {
                "file": photo.file,
                "detections": sum(1 for d in detections[photo.id] if d[0] in scored),
                "annotations": sum(
                    1 for a in coco.annotations if a["image_id"] == photo.id and coco.categories[a["category_id"]] in scored
                ),
            }
            for photo in coco.images
        ],
    }


def detector_version_evaluation_store(*, version_id: str, evaluation: dict[str, Any]) -> DetectorVersion:
    """Keep ``evaluation`` as the version's latest. Not part of the immutable version: a version
    can be evaluated again, on other labels or another machine, and the latest result replaces it."""
    version = DetectorVersion.objects.filter(id=version_id).first()
    if version is None:
        raise EvaluationError(f"no version {version_id}")
    version.evaluation = evaluation
    version.save(update_fields=["evaluation"])
    return version
