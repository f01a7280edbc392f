"""Uploaded model files (artifacts): registering a version with one, and a worker's local cache.

An artifact is immutable bytes named by their sha256 in the bucket (``models/sha256/<digest>``);
a version row points at them and counts them as its one weight, so its label stays
``name@version+weights.<digest>``. Registration is all or nothing: the file is checked in a child
process (detection.artifact_check) before anything is stored; the object is written before the
row, and removed again if the row cannot be written. Workers fetch by digest into MODEL_CACHE_DIR
and check the digest before loading; nothing that runs a model trusts a path it was given.
"""

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from core.errors import Conflict, DomainError, TooLarge, Unavailable
from detection.artifact_check import ArtifactRefused, artifact_check
from detection.base import settings_hash
from detection.engines import ARTIFACT_IMPLEMENTATIONS
from detection.labels import label_valid
from detection.precision import settings_with_precision
from detection.weights import WeightsMismatch, sha256_file
from detection.yolo_onnx import labels_from_names
from storage import s3 as storage

from .models import DetectorVersion
from .services import SEMVER, RegistryError, _code_commit, _release_dataset

logger = logging.getLogger(__name__)

ARTIFACT_FILE = "model.onnx"  # the artifact's name in a version's weights list
CONTENT_TYPE = "application/octet-stream"
MANIFEST_KEYS = {"name", "version", "implementation", "settings", "labels", "notes", "dataset", "build", "image", "packages"}
NAME_RE = r"^[a-z][a-z0-9_-]{0,31}$"


def artifact_key(sha256: str) -> str:
    return f"models/sha256/{sha256}"


def _refuse(code: str, message: str) -> DomainError:
    return DomainError(code, message, field="manifest")


def _manifest(manifest: Any) -> dict[str, Any]:
    """The manifest, checked field by field (400 naming the field)."""
    import re

    if not isinstance(manifest, dict):
        raise _refuse("invalid_manifest", "The manifest must be a JSON object.")
    unknown = sorted(set(manifest) - MANIFEST_KEYS)
    if unknown:
        raise _refuse("invalid_manifest", f"Unknown manifest keys: {', '.join(unknown)}.")
    missing = [key for key in ("name", "version", "implementation", "settings") if key not in manifest]
    if missing:
        raise _refuse("invalid_manifest", f"The manifest needs {', '.join(missing)}.")
    if not isinstance(manifest["name"], str) or not re.fullmatch(NAME_RE, manifest["name"]):
        raise _refuse("invalid_manifest", "name: lower-case letters, digits, - and _, starting with a letter, at most 32.")
    if not isinstance(manifest["version"], str) or not SEMVER.match(manifest["version"]) or len(manifest["version"]) > 32:
        raise _refuse("invalid_manifest", "version must be semantic (MAJOR.MINOR.PATCH).")
    if manifest["implementation"] not in ARTIFACT_IMPLEMENTATIONS:
        raise _refuse("invalid_manifest", f"implementation must be one of {', '.join(ARTIFACT_IMPLEMENTATIONS)} for an uploaded model.")
    if not isinstance(manifest["settings"], dict):
        raise _refuse("invalid_manifest", "settings must be a JSON object.")
    for key in ("min_confidence", "iou"):
        value = manifest["settings"].get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1):
            raise _refuse("invalid_manifest", f"settings.{key} must be a number from 0 to 1.")
    labels = manifest.get("labels")
    if labels is not None and (not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels)):
        raise _refuse("invalid_manifest", "labels must be a non-empty list of class names, in class order.")
    for key, limit in (("notes", 100_000), ("build", 64), ("image", 255)):
        if not isinstance(manifest.get(key, ""), str) or len(manifest.get(key, "")) > limit:
            raise _refuse("invalid_manifest", f"{key} must be a string of at most {limit} characters.")
    packages = manifest.get("packages", {})
    if not isinstance(packages, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in packages.items()):
        raise _refuse("invalid_manifest", "packages must map package names to versions.")
    return manifest


def detector_version_upload(
    *, manifest: Any, path: Path, sha256: str | None = None, size: int | None = None
) -> tuple[DetectorVersion, bool]:
    """Register a version whose weights are the model file at ``path`` (a temporary copy the
    caller owns). Returns (version, created): the same id with the same bytes and manifest is the
    existing version (created False); other bytes or manifest: Conflict. The file is checked
    (detection.artifact_check) before anything is stored: a refusal is a DomainError naming the
    problem (field "artifact"), and leaves no row and no object."""
    manifest = _manifest(manifest)
    path = Path(path)
    size = path.stat().st_size if size is None else size
    if size > settings.MODEL_ARTIFACT_MAX_BYTES:
        raise TooLarge("artifact_too_large", f"The model file is larger than {settings.MODEL_ARTIFACT_MAX_BYTES} bytes.", field="artifact")
    sha256 = sha256 or sha256_file(path)
    version_id = f"{manifest['name']}@{manifest['version']}"
    existing = DetectorVersion.objects.filter(id=version_id).first()
    if existing is not None and existing.artifact_sha256 != sha256:
        raise Conflict(
            "version_exists", f"{version_id} is registered with other weights: versions are immutable, make a new one.", field="manifest"
        )

    try:
        facts = artifact_check(
            path,
            labels=manifest.get("labels"),
            settings=manifest["settings"],
            timeout=settings.MODEL_CHECK_SECONDS,
            memory_bytes=settings.MODEL_CHECK_MEMORY_BYTES,
        )
    except ArtifactRefused as exc:
        raise DomainError(exc.code, exc.message, field="artifact") from None
    names = manifest.get("labels") or facts.names
    try:
        classes, label_map = labels_from_names(names)
    except ValueError as exc:
        raise DomainError("artifact_labels", f"The class names do not make distinct labels: {exc}.", field="manifest") from None
    assert all(label_valid(label) for label in classes)
    run_settings = {**manifest["settings"], "layout": facts.layout, "input_size": list(facts.input_size), "classes": classes}
    run_settings = settings_with_precision(manifest["implementation"], run_settings)
    try:
        dataset = _release_dataset(version_id, manifest.get("dataset", {}))
    except RegistryError as exc:
        raise _refuse("invalid_manifest", str(exc)) from None
    fields = {
        "name": manifest["name"],
        "version": manifest["version"],
        "implementation": manifest["implementation"],
        "weights": [{"file": ARTIFACT_FILE, "sha256": sha256}],
        "settings": run_settings,
        "settings_hash": settings_hash(run_settings),
        "dataset": dataset,
        "build": str(manifest.get("build", "")),
        "image": str(manifest.get("image", "")),
        "labels": classes,
        "artifact_sha256": sha256,
        "artifact_size": size,
        "artifact_format": facts.format,
        "input_size": list(facts.input_size),
        "label_map": label_map,
    }
    notes = manifest.get("notes", "")
    if existing is not None:
        changed = [key for key, value in fields.items() if getattr(existing, key) != value]
        if changed:
            raise Conflict(
                "version_exists", f"{version_id} is registered with other {', '.join(changed)}: versions are immutable.", field="manifest"
            )
        return existing, False

    key = artifact_key(sha256)
    try:
        stored_here = _store(key, path, size)
    except storage.StorageError as exc:
        logger.error("storing model file %s failed: %s", key, exc)
        raise Unavailable("storage_unavailable", "The model file could not be stored; try again.") from exc
    try:
        with transaction.atomic():
            version = DetectorVersion.objects.create(
                id=version_id, packages=dict(manifest.get("packages") or {}), code_commit=_code_commit(), notes=notes, **fields
            )
    except IntegrityError:
        # Another upload of the same id won the race: answer as for a repeated upload.
        _unstore(key, sha256, stored_here)
        other = DetectorVersion.objects.filter(id=version_id).first()
        if other is not None and all(getattr(other, k) == v for k, v in fields.items()):
            return other, False
        raise Conflict("version_exists", f"{version_id} was registered meanwhile with other content.", field="manifest") from None
    except BaseException:
        _unstore(key, sha256, stored_here)
        raise
    logger.info("registered %s from an uploaded %s artifact (%d bytes, sha256 %s)", version.label, facts.format, size, sha256[:12])
    return version, True


def _store(key: str, path: Path, size: int) -> bool:
    """Put the file under ``key`` unless it is there already (same digest, same bytes). Returns
    whether this call wrote it (and so may remove it again)."""
    try:
        if storage.storage_size(key=key) == size:
            return False
    except storage.ObjectNotFound:
        pass
    with open(path, "rb") as fh:
        storage.storage_put(key=key, data=fh, length=size, content_type=CONTENT_TYPE)
    return True


def _unstore(key: str, sha256: str, stored_here: bool) -> None:
    """Remove an object this registration wrote, unless a version points at it after all."""
    if not stored_here or DetectorVersion.objects.filter(artifact_sha256=sha256).exists():
        return
    try:
        storage.storage_delete(key=key)
    except storage.StorageError:
        logger.exception("could not remove %s after a failed registration", key)


def artifact_readable(version: DetectorVersion) -> None:
    """Raise unless the version's artifact is in the bucket with its registered size (for
    /readyz: a HEAD request, nothing downloaded)."""
    size = storage.storage_size(key=version.artifact_key)
    if size != version.artifact_size:
        raise WeightsMismatch(f"{version.artifact_key} has {size} bytes, registered {version.artifact_size}")


# --- a worker's cache --------------------------------------------------------------------------

_cache_lock = threading.Lock()


def _cache_dir() -> Path:
    folder = Path(settings.MODEL_CACHE_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _evict(folder: Path, room: int) -> None:
    """Remove the least recently used files until ``room`` more bytes fit under the cap."""
    files = [p for p in folder.glob("*.onnx") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    for path in sorted(files, key=lambda p: p.stat().st_mtime):
        if total + room <= settings.MODEL_CACHE_MAX_BYTES:
            break
        total -= path.stat().st_size
        path.unlink(missing_ok=True)
        logger.info("model cache: removed %s (least recently used)", path.name)


def _download(key: str, target: Path) -> str:
    """Stream the object into a temporary file beside ``target``, hashing it; rename it into
    place. Returns the sha256 of what was written."""
    temp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    digest = hashlib.sha256()
    try:
        with open(temp, "wb") as fh:
            for chunk in storage.storage_stream(key=key, chunk_size=1 << 20):
                digest.update(chunk)
                fh.write(chunk)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return digest.hexdigest()


def artifact_local_path(sha256: str) -> Path:
    """A local copy of the artifact with this sha256, checked: from MODEL_CACHE_DIR, fetched from
    the bucket on first use. Raises WeightsMismatch when the bucket has no such object or other
    bytes under its name; storage.StorageError (transient) propagates."""
    folder = _cache_dir()
    target = folder / f"{sha256}.onnx"
    with _cache_lock:
        if target.is_file():
            if sha256_file(target) == sha256:
                os.utime(target)  # most recently used
                return target
            logger.warning("model cache: %s does not match its sha256; fetching it again", target.name)
            target.unlink(missing_ok=True)
        key = artifact_key(sha256)
        try:
            size = storage.storage_size(key=key)
        except storage.ObjectNotFound:
            raise WeightsMismatch(f"model file {key} is not in the bucket") from None
        if size > settings.MODEL_CACHE_MAX_BYTES:
            raise WeightsMismatch(f"model file {key} ({size} bytes) is larger than MODEL_CACHE_MAX_BYTES")
        _evict(folder, size)
        actual = _download(key, target)
        if actual != sha256:
            target.unlink(missing_ok=True)
            raise WeightsMismatch(f"model file {key} has sha256 {actual[:12]}…, registered {sha256[:12]}…")
        logger.info("model cache: fetched %s (%d bytes)", key, size)
        return target
