"""Score a detector version on a labelled photo set and keep the result on the version.

    python manage.py detector_evaluate mtcnn@1.1.0 --labels tests/data/labels/faces-v1 [--repeat 3]
    python manage.py detector_evaluate tiny@1.0.0 --coco annotations.json [--images DIR]

The second form reads a labelled set in COCO format (what labelling tools export) and reports
mAP@0.5, mAP@0.5:0.95 and per-label precision and recall, computed by faster-coco-eval.

It lives with the workers because it does what a worker does, in this process: decode each photo
with the worker's decoder (jobs.imaging), which the registry may not import, and run the
version's detector on it. The scoring and the record are registry.evaluation's.
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from jobs.imaging import ImageRejected, image_decode_rgb
from registry.coco import coco_load
from registry.evaluation import (
    PhotoUnreadable,
    detector_version_evaluate,
    detector_version_evaluate_coco,
    detector_version_evaluation_store,
    labels_load,
)
from registry.services import RegistryError


def decode_as_the_worker_does(data: bytes):
    try:
        return image_decode_rgb(data)
    except ImageRejected as exc:
        raise PhotoUnreadable(exc.message) from exc


class Command(BaseCommand):
    help = (
        "Detect a labelled photo set (this repository's manifest.json, or COCO annotations) with a detector "
        "version, in this process, and store the figures (precision, recall, F1; with COCO also mAP@0.5 and "
        "mAP@0.5:0.95 per label) and mean latency on the version (shown by the registry)."
    )

    def add_arguments(self, parser):
        parser.add_argument("version_id", metavar="VERSION", help="the version id, e.g. mtcnn@1.1.0")
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--labels", type=Path, metavar="DIR", help="a folder with manifest.json")
        source.add_argument("--coco", type=Path, metavar="FILE", help="a COCO annotations JSON (images, annotations, categories)")
        parser.add_argument(
            "--images", type=Path, metavar="DIR", help="with --coco: the folder its file_names are in (default: the JSON's folder)"
        )
        parser.add_argument("--tag", help="the label set's name (default: the folder's name; with --coco the JSON's name)")
        parser.add_argument("--repeat", type=int, default=1, metavar="N", help="time each photo N times (default 1)")

    def handle(self, *args, version_id, labels, coco, images, tag, repeat, **options):
        if images is not None and coco is None:
            raise CommandError("--images goes with --coco")
        try:
            if coco is not None:
                coco_set = coco_load(annotations=coco, images=images, tag=tag)
                result = detector_version_evaluate_coco(
                    version_id=version_id, coco=coco_set, decode=decode_as_the_worker_does, repeat=repeat
                )
            else:
                label_set = labels_load(directory=labels, tag=tag)
                result = detector_version_evaluate(version_id=version_id, labels=label_set, decode=decode_as_the_worker_does, repeat=repeat)
            detector_version_evaluation_store(version_id=version_id, evaluation=result)
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        if coco is not None:
            self._coco_summary(result)
        else:
            self._summary(result)

    def _coco_summary(self, result: dict) -> None:
        labels = result["labels"]
        self.stdout.write(
            f"{result['label']} on {labels['tag']} (COCO, annotations sha256 {labels['sha256'][:12]}, "
            f"{result['photos']} photos, {result['annotations']} boxes; {result['library']})"
        )
        if result["labels_not_scored"]:
            self.stdout.write(f"  not scored (the version does not return them): {', '.join(result['labels_not_scored'])}")

        def fmt(value) -> str:
            return "  -  " if value is None else f"{value:.3f}"

        self.stdout.write(f"  {'label':24} {'boxes':>5} {'found':>5} {'AP@.5':>6} {'AP@.5:.95':>9} {'prec':>6} {'recall':>6}")
        for label, row in result["per_label"].items():
            self.stdout.write(
                f"  {label[:24]:24} {row['annotations']:>5} {row['detections']:>5} {fmt(row['ap_50']):>6} "
                f"{fmt(row['ap_50_95']):>9} {fmt(row['precision']):>6} {fmt(row['recall']):>6}"
            )
        self.stdout.write(
            f"mAP@0.5 {result['map_50']:.3f}  mAP@0.5:0.95 {result['map_50_95']:.3f}  precision {result['precision']:.3f}  "
            f"recall {result['recall']:.3f}  F1 {result['f1']:.3f}  (precision and recall at the score of best F1)"
        )
        self.stdout.write(
            f"latency {result['latency_ms_mean']:.1f} ms per photo on {result['device']} "
            f"(mean of {result['photos']} photos x {result['repeat']}, detector loaded and warm)"
        )
        self.stdout.write(f"stored on {result['version']} ({result['evaluated_at']})")

    def _summary(self, result: dict) -> None:
        labels = result["labels"]
        self.stdout.write(
            f"{result['label']} on {labels['tag']} (manifest sha256 {labels['sha256'][:12]}, "
            f"{result['photos']} photos, scored by {labels['scoring']})"
        )
        self.stdout.write(f"  {'photo':44} {'faces':>5} {'found':>5} {'TP':>3}")
        for photo in result["per_photo"]:
            self.stdout.write(f"  {photo['file'][-44:]:44} {photo['faces']:>5} {photo['found']:>5} {photo['true_positives']:>3}")
        self.stdout.write(
            f"precision {result['precision']:.3f}  recall {result['recall']:.3f}  F1 {result['f1']:.3f}  "
            f"({result['true_positives']} true positives of {result['detections']} detections, {result['faces']} faces)"
        )
        self.stdout.write(
            f"latency {result['latency_ms_mean']:.1f} ms per photo on {result['device']} "
            f"(mean of {result['photos']} photos x {result['repeat']}, detector loaded and warm)"
        )
        self.stdout.write(f"stored on {result['version']} ({result['evaluated_at']})")
