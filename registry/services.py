"""The model registry: detector versions registered from files in detector_versions/, one of them
active, each job pinned to the version that detects it.

A version is immutable: registering a file again with other content is refused (make a new
version instead). Activation is a pointer in the database, read when a job is accepted, so a
switch applies to new jobs within the next request and never to jobs already accepted.
"""

import datetime as dt
import importlib.metadata
import json
import logging
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.errors import DomainError, Unavailable
from detection.base import DetectorSpec, settings_hash, weight_checksums
from detection.engines import loadable
from detection.labels import LABEL_PATTERN, label_valid
from detection.precision import settings_with_precision
from detection.weights import WeightsMismatch, verify_weights

from .models import ActiveDetector, DetectorVersion, WorkerHeartbeat, default_labels

logger = logging.getLogger(__name__)

VERSIONS_DIR = Path(settings.BASE_DIR) / "detector_versions"
SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$")
REQUIRED = ("name", "version", "implementation", "weights", "settings")


class RegistryError(Exception):
    """A version file or registry operation is not acceptable."""


def _code_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _installed(packages: dict[str, str]) -> dict[str, str]:
    found = {}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def _release_dataset(version_id: str, dataset) -> dict[str, str]:
    """``{"tag", "sha256"}``: the data set's name and a hash of its contents."""
    if not dataset:
        return {}
    if not isinstance(dataset, dict) or set(dataset) - {"tag", "sha256"} or not isinstance(dataset.get("tag"), str):
        raise RegistryError(f'{version_id}: dataset must be {{"tag": ..., "sha256": ...}}')
    return {key: str(value) for key, value in dataset.items()}


def _labels(version_id: str, labels) -> list[str]:
    """The labels a version can return: a non-empty list of distinct label names, in the file's
    order; ["face"] when the file has no "labels"."""
    if labels is None:
        return default_labels()
    if not isinstance(labels, list) or not labels:
        raise RegistryError(f"{version_id}: labels must be a non-empty list of label names")
    bad = [label for label in labels if not label_valid(label)]
    if bad:
        raise RegistryError(f"{version_id}: labels {bad!r} do not match {LABEL_PATTERN}")
    if len(set(labels)) != len(labels):
        raise RegistryError(f"{version_id}: labels are listed more than once")
    return list(labels)


def _default_rank(version_id: str, rank) -> int | None:
    """A version file's optional ``default_rank``: a positive integer, 1 first (see
    detector_version_default), or None when the version is never a default."""
    if rank is None:
        return None
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise RegistryError(f"{version_id}: default_rank must be a positive integer (1 is tried first)")
    return rank


def detector_version_register(*, path: Path) -> tuple[DetectorVersion, bool]:
    """Register the version described by a JSON file. Returns (version, created).

    The weights on disk must have the checksums the file declares, and the installed packages
    are recorded as found. Registering the same file twice is a no-op; the same id with other
    content is refused.
    """
    spec = json.loads(Path(path).read_text())
    missing = [key for key in REQUIRED if key not in spec]
    if missing:
        raise RegistryError(f"{path}: missing {', '.join(missing)}")
    if not SEMVER.match(spec["version"]):
        raise RegistryError(f"{path}: version {spec['version']!r} is not semantic (MAJOR.MINOR.PATCH)")
    version_id = f"{spec['name']}@{spec['version']}"
    _default_rank(version_id, spec.get("default_rank"))
    expected = weight_checksums(spec["weights"])
    try:
        verify_weights(spec["implementation"], expected)
    except WeightsMismatch as exc:
        raise RegistryError(f"{version_id}: {exc}") from exc

    # A version of an engine that could drift records the precision it runs at (f32 unless the
    # file names one), so a file written before precision was recorded registers as the same version.
    spec["settings"] = settings_with_precision(spec["implementation"], spec["settings"])
    fields = {
        "name": spec["name"],
        "version": spec["version"],
        "implementation": spec["implementation"],
        "weights": spec["weights"],
        "settings": spec["settings"],
        "settings_hash": settings_hash(spec["settings"]),
        # Release records (optional): what the version was trained or tuned on, its build, the
        # image that serves it. Part of what a version is, so immutable like the rest.
        "dataset": _release_dataset(version_id, spec.get("dataset", {})),
        "build": str(spec.get("build", "")),
        "image": str(spec.get("image", "")),
        # The labels it can return ("face" for face models; class names otherwise): what a
        # version detects, so immutable too. Files without the key are face detectors.
        "labels": _labels(version_id, spec.get("labels")),
    }
    notes = spec.get("notes", "")
    existing = DetectorVersion.objects.filter(id=version_id).first()
    if existing is not None:
        changed = [key for key, value in fields.items() if getattr(existing, key) != value]
        if changed:
            raise RegistryError(f"{version_id} is registered with other {', '.join(changed)}: versions are immutable, make a new one")
        if existing.notes != notes:
            # Notes are prose for people, not part of what detects: they may be corrected.
            existing.notes = notes
            existing.save(update_fields=["notes"])
        return existing, False
    installed = _installed(spec.get("packages", {}))
    if installed != spec.get("packages", {}):
        logger.warning("%s declares packages %s; installed here: %s", version_id, spec.get("packages"), installed)
    version = DetectorVersion.objects.create(id=version_id, packages=installed, code_commit=_code_commit(), notes=notes, **fields)
    logger.info("registered %s", version.label)
    return version, True


def detector_versions_register_all(*, directory: Path = VERSIONS_DIR) -> list[DetectorVersion]:
    return [detector_version_register(path=path)[0] for path in sorted(directory.glob("*.json"))]


def detector_version_activate(*, version_id: str, replace: bool = True) -> DetectorVersion:
    """Point new jobs at this version, and return the active version. With ``replace=False``
    (the bootstrap at start) only when none is active yet: an active version, an operator's
    choice, is kept and returned."""
    with transaction.atomic():
        version = DetectorVersion.objects.select_for_update().filter(id=version_id).first()
        if version is None:
            raise RegistryError(f"no version {version_id}")
        if version.retired_at:
            raise RegistryError(f"{version_id} is retired")
        if replace:
            ActiveDetector.objects.update_or_create(id=1, defaults={"version": version})
        else:
            # One statement decides, so two processes bootstrapping at once cannot both activate.
            pointer, created = ActiveDetector.objects.select_related("version").get_or_create(id=1, defaults={"version": version})
            if not created:
                return pointer.version
    logger.warning("active detector is now %s", version.label)
    return version


# Checks that may refuse to retire a version, added by the apps that route jobs to versions
# (rollouts: a live rollout's candidate and baseline) when they load, so that the registry never
# imports them. Each takes a version id and returns why it cannot be retired, or None.
RETIRE_GUARDS: list[Callable[[str], str | None]] = []


def detector_version_retire_guard_add(guard: Callable[[str], str | None]) -> None:
    """Have ``guard`` consulted by every retirement (once, however often it is added)."""
    if guard not in RETIRE_GUARDS:
        RETIRE_GUARDS.append(guard)


def detector_version_retire(*, version_id: str) -> DetectorVersion:
    """Refuse this version for new jobs. The active version cannot be retired, nor one that a
    guard refuses (a live rollout's candidate or baseline): RegistryError says why. The API, the
    shell command and the admin all retire through here."""
    with transaction.atomic():
        # The version's row lock orders this with rollout_start, which locks its candidate: a
        # rollout that starts meanwhile is seen by the guards below, or sees the retirement.
        version = DetectorVersion.objects.select_for_update().filter(id=version_id).first()
        if version is None:
            raise RegistryError(f"no version {version_id}")
        if ActiveDetector.objects.filter(version=version).exists():
            raise RegistryError(f"{version_id} is active: activate another version first")
        for guard in RETIRE_GUARDS:
            refusal = guard(version_id)
            if refusal:
                raise RegistryError(refusal)
        if not version.retired_at:
            version.retired_at = timezone.now()
            version.save(update_fields=["retired_at"])
    return version


def detector_version_active() -> DetectorVersion | None:
    pointer = ActiveDetector.objects.select_related("version").filter(id=1).first()
    return pointer.version if pointer else None


def detector_version_for_job(*, requested: str | None) -> DetectorVersion:
    """The version a new job will use: the one asked for, or the active one."""
    if requested:
        version = DetectorVersion.objects.filter(id=requested).first()
        if version is None:
            raise DomainError("unknown_model_version", f"No model version {requested!r}; see /api/v1/models/.", field="model_version")
        if version.retired_at:
            raise DomainError("retired_model_version", f"{requested} is retired.", field="model_version")
        return version
    version = detector_version_active()
    if version is None:
        raise Unavailable("no_active_model", "No detector version is active; an operator must activate one.")
    return version


def detector_spec(version: DetectorVersion) -> DetectorSpec:
    """What a worker needs to load the version, without the database."""
    return DetectorSpec(
        id=version.id,
        label=version.label,
        implementation=version.implementation,
        settings=version.settings,
        weights=weight_checksums(version.weights),
    )


def detector_version_default(*, directory: Path = VERSIONS_DIR, device: str | None = None) -> DetectorVersion | None:
    """The version a fresh database activates when DETECTOR_MODEL is empty: of the files in
    ``directory`` that carry a ``default_rank`` (the fastest versions whose faces equal the
    reference's, fastest first), the first that is registered, not retired, and whose engine this
    machine can load on ``device`` (DETECTOR_DEVICE: mtcnn@1.2.0's OpenVINO engine runs on the CPU
    only, so on CUDA the torch mtcnn@1.1.0 comes next). None when none qualifies."""
    device = settings.DETECTOR_DEVICE if device is None else device
    ranked = []
    for path in sorted(directory.glob("*.json")):
        spec = json.loads(path.read_text())
        version_id = f"{spec.get('name')}@{spec.get('version')}"
        rank = _default_rank(version_id, spec.get("default_rank"))
        if rank is not None:
            ranked.append((rank, version_id))
    versions = DetectorVersion.objects.in_bulk([version_id for _, version_id in ranked])
    for _, version_id in sorted(ranked):
        version = versions.get(version_id)
        if version is None or version.retired_at:
            continue
        if not loadable(version.implementation, device=device):
            logger.info(
                "default version: skipping %s, whose engine (%s) cannot load here on %s", version_id, version.implementation, device
            )
            continue
        return version
    return None


def detector_bootstrap() -> DetectorVersion:
    """Register the shipped versions and, on a fresh database, activate DETECTOR_MODEL, or when it
    is empty the default version (detector_version_default). An active version is never replaced
    here, so an operator's `detector_activate` survives restarts. Run at start (make up, compose);
    idempotent."""
    detector_versions_register_all()
    active = detector_version_active()
    if active is not None:
        if settings.DETECTOR_MODEL and settings.DETECTOR_MODEL != active.id:
            logger.warning(
                "DETECTOR_MODEL is %s but %s is active: DETECTOR_MODEL only chooses on a fresh database; "
                "`manage.py detector_activate %s` switches",
                settings.DETECTOR_MODEL,
                active.id,
                settings.DETECTOR_MODEL,
            )
        return active
    version_id = settings.DETECTOR_MODEL
    if not version_id:
        default = detector_version_default()
        if default is None:
            raise RegistryError(
                f"no default detector version can run here (DETECTOR_DEVICE={settings.DETECTOR_DEVICE}): "
                "set DETECTOR_MODEL to a registered version"
            )
        version_id = default.id
        logger.warning("fresh database: activating the default version %s (DETECTOR_MODEL is empty)", version_id)
    return detector_version_activate(version_id=version_id, replace=False)


def detector_version_verify_weights(version: DetectorVersion) -> None:
    """Raise WeightsMismatch unless the weights on disk match the version (for /readyz)."""
    verify_weights(version.implementation, weight_checksums(version.weights))


# --- Which workers have which versions loaded --------------------------------------------------

# A detection worker process reports every WORKER_HEARTBEAT_SECONDS; one silent for longer than
# this is taken for gone (killed, scaled down).
WORKER_STALE_SECONDS = 30


def worker_heartbeat(*, worker: str, versions: list[str]) -> None:
    """Record that ``worker`` (hostname:pid) is alive with these version ids loaded."""
    WorkerHeartbeat.objects.update_or_create(worker=worker, defaults={"versions": sorted(versions), "seen_at": timezone.now()})


def worker_heartbeat_forget(*, worker: str) -> None:
    """A worker process that stops says so, rather than being counted until it goes stale."""
    WorkerHeartbeat.objects.filter(worker=worker).delete()


def workers_warm(*, version_id: str, stale_seconds: float = WORKER_STALE_SECONDS) -> dict[str, int]:
    """How many live detection worker processes there are, and how many have ``version_id``
    loaded."""
    since = timezone.now() - dt.timedelta(seconds=stale_seconds)
    live = list(WorkerHeartbeat.objects.filter(seen_at__gte=since).values_list("versions", flat=True))
    return {"live": len(live), "loaded": sum(1 for versions in live if version_id in versions)}
