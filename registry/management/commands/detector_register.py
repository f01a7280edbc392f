import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from core.errors import DomainError
from registry.services import VERSIONS_DIR, RegistryError, detector_bootstrap, detector_version_activate, detector_version_register


class Command(BaseCommand):
    help = (
        "Register detector versions from JSON files (default: every file in detector_versions/). "
        "Idempotent; a changed file for a registered version is refused. With --artifact, FILE is "
        "the manifest of an uploaded model (as POST /api/v1/models/ takes it) and the model file is "
        "checked, stored in the bucket by its sha256 and registered."
    )

    def add_arguments(self, parser):
        parser.add_argument("files", nargs="*", type=Path)
        parser.add_argument("--activate", metavar="ID", help="then make this version active")
        parser.add_argument(
            "--bootstrap",
            action="store_true",
            help="register every shipped version; if none is active, activate DETECTOR_MODEL (empty: the default version)",
        )
        parser.add_argument("--artifact", type=Path, metavar="MODEL", help="the model file (e.g. model.onnx) of the one manifest given")

    def handle(self, *args, files, activate, bootstrap, artifact, **options):
        try:
            if bootstrap:
                active = detector_bootstrap()
                self.stdout.write(f"active: {active.label if active else 'none'}")
                return
            if artifact is not None:
                self._register_artifact(files, artifact)
            else:
                for path in files or sorted(VERSIONS_DIR.glob("*.json")):
                    version, created = detector_version_register(path=path)
                    self.stdout.write(f"{'registered' if created else 'unchanged '} {version.label}")
            if activate:
                self.stdout.write(f"active: {detector_version_activate(version_id=activate).label}")
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc

    def _register_artifact(self, files: list[Path], artifact: Path) -> None:
        from registry.artifacts import detector_version_upload

        if len(files) != 1:
            raise CommandError("--artifact takes exactly one manifest file")
        try:
            manifest = json.loads(files[0].read_text())
        except (OSError, ValueError) as exc:
            raise CommandError(f"{files[0]}: {exc}") from exc
        if not artifact.is_file():
            raise CommandError(f"{artifact}: no such file")
        try:
            version, created = detector_version_upload(manifest=manifest, path=artifact)
        except DomainError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from exc
        self.stdout.write(
            f"{'registered' if created else 'unchanged '} {version.label} (artifact sha256 "
            f"{version.artifact_sha256}, {version.artifact_size} bytes)"
        )
