"""Record the precision of the versions registered before it was part of a version.

The shipped version files now say "precision": "f32" for the engines whose runtime could lower it
by itself (OpenVINO's bfloat16 on CPUs with it, cuDNN's TF32 on GPUs). The engines run f32 when
the settings name none, so a row registered before keeps its id and its faces; this writes that
fact into its settings (and settings hash), so that registering the updated file again at start-up
is the no-op it must be rather than an "immutable version changed" refusal (the registry fills
in f32 for a file that names no precision: registry/services.py).
"""

import hashlib
import json

from django.db import migrations

# detection.precision.PINNED_IMPLEMENTATIONS as it stands (copied, like the hash, so that the
# migration never changes meaning): the registry now records these engines' precision.
PINNED = ("mtcnn", "mtcnn-openvino", "blazeface")


def _hash(settings: dict) -> str:
    # detection.base.settings_hash as it stands: copied so the migration never changes meaning.
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def pin(apps, schema_editor):
    DetectorVersion = apps.get_model("registry", "DetectorVersion")
    for version in DetectorVersion.objects.filter(implementation__in=PINNED):
        if "precision" in version.settings:
            continue
        version.settings = {"precision": "f32", **version.settings}
        version.settings_hash = _hash(version.settings)
        version.save(update_fields=["settings", "settings_hash"])


def unpin(apps, schema_editor):
    DetectorVersion = apps.get_model("registry", "DetectorVersion")
    for version in DetectorVersion.objects.filter(implementation__in=PINNED):
        if version.settings.get("precision") == "f32":
            version.settings = {k: v for k, v in version.settings.items() if k != "precision"}
            version.settings_hash = _hash(version.settings)
            version.save(update_fields=["settings", "settings_hash"])


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0003_detectorversion_labels"),
    ]

    operations = [migrations.RunPython(pin, unpin)]
