"""The detector versions and the pointer to the active one."""

import hashlib

from django.db import models

from detection.labels import DEFAULT_LABELS


def default_labels() -> list[str]:
    """The labels of a version whose file declares none (and of versions registered before
    labels were recorded): a face detector's."""
    return list(DEFAULT_LABELS)


class DetectorVersion(models.Model):
    """A registered detector version: an implementation, its weights (by checksum) and its fixed
    settings. Versions are immutable once registered; they are activated or retired, never edited."""

    id = models.CharField(primary_key=True, max_length=64)  # name@version
    name = models.CharField(max_length=32)
    version = models.CharField(max_length=32)
    implementation = models.CharField(max_length=32)
    weights = models.JSONField(default=list)  # [{"file": "pnet.pt", "sha256": "..."}]
    packages = models.JSONField(default=dict)  # {"facenet-pytorch": "2.5.3", "torch": "2.14.1"}
    settings = models.JSONField(default=dict)
    settings_hash = models.CharField(max_length=64)
    code_commit = models.CharField(max_length=64, blank=True)
    notes = models.TextField(blank=True)
    # Release records, from the version file: the data it was trained or tuned on ({"tag",
    # "sha256"}), the build id, and the serving image tag.
    dataset = models.JSONField(default=dict, blank=True)
    build = models.CharField(max_length=64, blank=True)
    image = models.CharField(max_length=255, blank=True)
    # The labels this version can return (the version file's "labels"; ["face"] when it declares
    # none). Part of the immutable record; an upload may only ask to keep labels from it.
    labels = models.JSONField(default=default_labels)
    # An uploaded model file (the artifact), when the version has one: its sha256 (its name in the
    # bucket, models/sha256/<digest>, and its one weight), size in bytes, format ("onnx") and the
    # network's input size [width, height]. Empty for versions whose weights ship in a package.
    artifact_sha256 = models.CharField(max_length=64, blank=True, db_index=True)
    artifact_size = models.BigIntegerField(null=True, blank=True)
    artifact_format = models.CharField(max_length=16, blank=True)
    input_size = models.JSONField(null=True, blank=True)
    # The model's class names that were changed to fit the label pattern ({"traffic light":
    # "traffic_light"}): what a label stands for in the team's own data set.
    label_map = models.JSONField(default=dict, blank=True)
    # The latest `detector_evaluate` result on a labelled photo set (not part of the immutable
    # spec: a version can be evaluated again on other data).
    evaluation = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "api_detectorversion"  # the table it had before the split into apps
        ordering = ["name", "created_at"]

    def __str__(self) -> str:
        return self.label

    @property
    def weights_digest(self) -> str:
        lines = sorted(f"{w['file']}:{w['sha256']}" for w in self.weights)
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    @property
    def artifact_key(self) -> str:
        """The bucket key of the uploaded model file ("" when the version has none)."""
        return f"models/sha256/{self.artifact_sha256}" if self.artifact_sha256 else ""

    @property
    def label(self) -> str:
        """The data-aware label recorded on jobs and faces, e.g. mtcnn@1.0.0+weights.3f9a2c1b."""
        return f"{self.id}+weights.{self.weights_digest[:8]}"


class ActiveDetector(models.Model):
    """The pointer to the version new jobs use: one row. Changing it takes effect for the next
    job submitted; running workers load the new version on first use."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    version = models.ForeignKey(DetectorVersion, on_delete=models.PROTECT)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "api_activedetector"

    def __str__(self) -> str:
        return f"active: {self.version_id}"


class WorkerHeartbeat(models.Model):
    """A detection worker process and the detector versions it has loaded, reported every few
    seconds (workers/prewarm.py). A rollout counts the live ones holding its candidate."""

    worker = models.CharField(max_length=255, unique=True)  # hostname:pid
    versions = models.JSONField(default=list)  # version ids loaded in this process
    seen_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.worker
