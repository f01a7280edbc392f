from django.core.management.base import BaseCommand, CommandError

from registry.services import RegistryError, detector_version_activate


class Command(BaseCommand):
    help = "Make a registered detector version the one new jobs use (takes effect at once, no restart)."

    def add_arguments(self, parser):
        parser.add_argument("version_id", help="name@version, e.g. mtcnn@1.1.0")

    def handle(self, *args, version_id, **options):
        try:
            self.stdout.write(f"active: {detector_version_activate(version_id=version_id).label}")
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
