"""Labelled photos in COCO format (what labelling tools export), and scoring detections on them
with faster-coco-eval (a maintained reimplementation of pycocotools' COCOeval): mAP@0.5,
mAP@0.5:0.95 and per-label precision and recall. No metric is computed here by hand.

A COCO set is an annotations JSON (``images``: id, file_name, width, height; ``annotations``:
id, image_id, category_id, bbox [x, y, width, height], optional area and iscrowd;
``categories``: id, name) and a folder of images named by ``file_name``. Category names become
label names as uploaded models' class names do (``traffic light`` -> ``traffic_light``); a version
is scored on the categories whose label it returns, and its detections of other labels are left
out (it was not asked about them).
"""

import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detection.weights import sha256_file
from detection.yolo_onnx import label_from_name

from .services import RegistryError


class CocoError(RegistryError):
    """The annotations or an image cannot be used; the message names the problem."""


@dataclass(frozen=True)
class CocoImage:
    id: int
    file: str
    path: Path
    width: int
    height: int


@dataclass(frozen=True)
class CocoSet:
    tag: str
    sha256: str  # of the annotations file's bytes
    images_sha256: str  # of the images' names and digests: the photos are pinned too
    images: tuple[CocoImage, ...]
    categories: dict[int, str]  # category id -> label name
    names: dict[int, str]  # category id -> the name as the file gives it
    annotations: tuple[dict[str, Any], ...]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _id(where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CocoError(f'{where}: "id" must be an integer, not {value!r}')
    return value


def coco_load(*, annotations: Path, images: Path | None = None, tag: str | None = None) -> CocoSet:
    """Read and check a COCO annotations file and its images (``images``: the folder the
    file_names are relative to; default the annotations file's folder). Raises CocoError naming
    the first problem."""
    annotations = Path(annotations)
    if not annotations.is_file():
        raise CocoError(f"no annotations file {annotations}")
    folder = Path(images) if images is not None else annotations.parent
    if not folder.is_dir():
        raise CocoError(f"no image folder {folder}")
    raw = annotations.read_bytes()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CocoError(f"{annotations} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in ("images", "annotations", "categories")):
        raise CocoError(f'{annotations}: a COCO file is an object with "images", "annotations" and "categories" lists')
    if not data["images"]:
        raise CocoError(f'{annotations}: "images" is empty')

    categories, names, seen_labels = {}, {}, {}
    for index, cat in enumerate(data["categories"]):
        where = f"categories[{index}]"
        if not isinstance(cat, dict) or not isinstance(cat.get("name"), str) or not cat["name"]:
            raise CocoError(f'{where}: a category is {{"id", "name"}}')
        cid = _id(where, cat.get("id"))
        if cid in categories:
            raise CocoError(f"{where}: category id {cid} is listed twice")
        label = label_from_name(cat["name"], cid)
        if label in seen_labels:
            raise CocoError(f"{where}: categories {seen_labels[label]!r} and {cat['name']!r} both become label {label!r}")
        seen_labels[label] = cat["name"]
        categories[cid], names[cid] = label, cat["name"]

    photos, digests = [], []
    for index, entry in enumerate(data["images"]):
        where = f"images[{index}]"
        if not isinstance(entry, dict):
            raise CocoError(f'{where}: an image is {{"id", "file_name", "width", "height"}}')
        iid = _id(where, entry.get("id"))
        name = entry.get("file_name")
        if not isinstance(name, str) or not name or Path(name).is_absolute():
            raise CocoError(f'{where}: "file_name" must be a path relative to the image folder, not {name!r}')
        path = (folder / name).resolve()
        if not path.is_file():
            raise CocoError(f"{where} ({name}): no such image ({path})")
        width, height = entry.get("width"), entry.get("height")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
            raise CocoError(f'{where} ({name}): "width" and "height" must be positive integers')
        photos.append(CocoImage(id=iid, file=name, path=path, width=width, height=height))
        digests.append(f"{name}:{sha256_file(path)}")
    ids = [p.id for p in photos]
    if len(set(ids)) != len(ids):
        raise CocoError(f"{annotations}: an image id is listed twice")

    clean = []
    known = set(ids)
    for index, ann in enumerate(data["annotations"]):
        where = f"annotations[{index}]"
        if not isinstance(ann, dict):
            raise CocoError(f'{where}: an annotation is {{"id", "image_id", "category_id", "bbox"}}')
        if ann.get("image_id") not in known:
            raise CocoError(f'{where}: image_id {ann.get("image_id")!r} is not in "images"')
        if ann.get("category_id") not in categories:
            raise CocoError(f'{where}: category_id {ann.get("category_id")!r} is not in "categories"')
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)) or bbox[2] <= 0 or bbox[3] <= 0:
            raise CocoError(f'{where}: "bbox" must be [x, y, width, height] with a positive width and height, not {bbox!r}')
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1):
            raise CocoError(f'{where}: "iscrowd" must be 0 or 1')
        clean.append(
            {
                "id": index + 1,  # ids of their own: a file's may repeat or be missing
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": [float(v) for v in bbox],
                "area": float(ann["area"]) if _number(ann.get("area")) else float(bbox[2] * bbox[3]),
                "iscrowd": iscrowd,
            }
        )
    return CocoSet(
        tag=tag or annotations.stem,
        sha256=hashlib.sha256(raw).hexdigest(),
        images_sha256=hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest(),
        images=tuple(photos),
        categories=categories,
        names=names,
        annotations=tuple(clean),
    )


def coco_score(
    coco: CocoSet, detections: dict[int, list[tuple[str, float, tuple[float, float, float, float]]]], *, version_labels: list[str]
) -> dict[str, Any]:
    """Score ``detections`` (image id -> [(label, confidence, (x, y, width, height))]) on the set
    with faster-coco-eval's bbox evaluation, over the categories whose label the version returns.
    Returns mAP@0.5, mAP@0.5:0.95 (COCO's all-area, 100-detection figures), the library's macro
    precision and recall (at the score threshold of best mean F1) and F1 from them, and per label:
    AP@0.5, AP@0.5:0.95, precision, recall, and the counts of annotations and detections."""
    import contextlib

    import faster_coco_eval
    from faster_coco_eval import COCO, COCOeval_faster

    scored = {cid: label for cid, label in coco.categories.items() if label in version_labels}
    if not scored:
        raise CocoError(f"the version returns none of the set's labels ({', '.join(sorted(coco.categories.values()))})")
    by_label = {label: cid for cid, label in scored.items()}
    gt = {
        "images": [{"id": p.id, "file_name": p.file, "width": p.width, "height": p.height} for p in coco.images],
        "annotations": [dict(a) for a in coco.annotations if a["category_id"] in scored],
        "categories": [{"id": cid, "name": label} for cid, label in sorted(scored.items())],
    }
    results = []
    for image_id, found in detections.items():
        for label, confidence, box in found:
            if label in by_label:
                results.append(
                    {"image_id": image_id, "category_id": by_label[label], "bbox": [float(v) for v in box], "score": float(confidence)}
                )

    counts = {label: {"annotations": 0, "detections": 0} for label in by_label}
    for ann in gt["annotations"]:
        counts[scored[ann["category_id"]]]["annotations"] += 1
    for r in results:
        counts[scored[r["category_id"]]]["detections"] += 1

    figures: dict[str, Any] = {"library": f"faster-coco-eval {faster_coco_eval.__version__}"}
    if not results or not gt["annotations"]:
        # Nothing to rank (no detection) or nothing to find: COCOeval has no curve to integrate.
        # Every figure is 0 but for the trivially perfect case of nothing found and nothing there.
        perfect = not results and not gt["annotations"]
        value = 1.0 if perfect else 0.0
        per_label = {label: {"ap_50": value, "ap_50_95": value, "precision": value, "recall": value, **counts[label]} for label in by_label}
        return {**figures, "map_50": value, "map_50_95": value, "precision": value, "recall": value, "f1": value, "per_label": per_label}

    with contextlib.redirect_stdout(io.StringIO()):  # the library prints its summary table
        truth = COCO(gt)
        found = truth.loadRes(results)
        evaluation = COCOeval_faster(truth, found, iouType="bbox", print_function=lambda *a, **k: None)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        extended = evaluation.extended_metrics  # a property
    stats = evaluation.stats_as_dict
    per_class = {row["class"]: row for row in extended["class_map"]}
    per_label = {}
    for label in sorted(by_label):
        row = per_class.get(label)
        if row is None:  # the library leaves out a class it has no figure for (no annotation)
            per_label[label] = {"ap_50": None, "ap_50_95": None, "precision": None, "recall": None, **counts[label]}
        else:
            per_label[label] = {
                "ap_50": row["map@50"],
                "ap_50_95": row["map@50:95"],
                "precision": row["precision"],
                "recall": row["recall"],
                **counts[label],
            }
    precision, recall = float(extended["precision"]), float(extended["recall"])
    return {
        **figures,
        "map_50": max(float(stats["AP_50"]), 0.0),  # -1 is the library's "no data": never a score
        "map_50_95": max(float(stats["AP_all"]), 0.0),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "per_label": per_label,
    }
