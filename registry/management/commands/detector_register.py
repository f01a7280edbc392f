from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from registry.services import RegistryError, detector_bootstrap, detector_version_activate, detector_version_register, VERSIONS_DIR


class Command(BaseCommand):
    help = (
        "Register detector versions from JSON files (default: every file in detector_versions/). "
        "Idempotent; a changed file for a registered version is refused."
    )

    def add_arguments(self, parser):
        parser.add_argument("files", nargs="*", type=Path)
        parser.add_argument("--activate", metavar="ID", help="then make this version active")
        parser.add_argument(
            "--bootstrap", action="store_true", help="register every shipped version; activate DETECTOR_MODEL if none is active"
        )

    def handle(self, *args, files, activate, bootstrap, **options):
        try:
            if bootstrap:
                active = detector_bootstrap()
                self.stdout.write(f"active: {active.label if active else 'none'}")
                return
            for path in files or sorted(VERSIONS_DIR.glob("*.json")):
                version, created = detector_version_register(path=path)
                self.stdout.write(f"{'registered' if created else 'unchanged '} {version.label}")
            if activate:
                self.stdout.write(f"active: {detector_version_activate(version_id=activate).label}")
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
