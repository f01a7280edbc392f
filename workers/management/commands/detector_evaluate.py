"""Score a detector version on a labelled photo set and keep the result on the version.

    python manage.py detector_evaluate mtcnn@1.1.0 --labels tests/data/labels/faces-v1 [--repeat 3]

It lives with the workers because it does what a worker does, in this process: decode each photo
with the worker's decoder (jobs.imaging), which the registry may not import, and run the
version's detector on it. The scoring and the record are registry.evaluation's.
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from jobs.imaging import ImageRejected, image_decode_rgb
from registry.evaluation import (
    PhotoUnreadable,
    detector_version_evaluate,
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
        "Detect a labelled photo set with a detector version, in this process, and store precision, "
        "recall, F1 and mean latency on the version (shown by the registry)."
    )

    def add_arguments(self, parser):
        parser.add_argument("version_id", metavar="VERSION", help="the version id, e.g. mtcnn@1.1.0")
        parser.add_argument("--labels", required=True, type=Path, metavar="DIR", help="a folder with manifest.json")
        parser.add_argument("--tag", help="the label set's name (default: the folder's name)")
        parser.add_argument("--repeat", type=int, default=1, metavar="N", help="time each photo N times (default 1)")

    def handle(self, *args, version_id, labels, tag, repeat, **options):
        try:
            label_set = labels_load(directory=labels, tag=tag)
            result = detector_version_evaluate(
                version_id=version_id, labels=label_set, decode=decode_as_the_worker_does, repeat=repeat
            )
            detector_version_evaluation_store(version_id=version_id, evaluation=result)
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        self._summary(result)

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
