from django.core.management.base import BaseCommand, CommandError

from registry.services import RegistryError, detector_version_retire


class Command(BaseCommand):
    help = "Retire a detector version: new jobs may no longer ask for it (jobs that used it keep their record)."

    def add_arguments(self, parser):
        parser.add_argument("version_id")

    def handle(self, *args, version_id, **options):
        try:
            self.stdout.write(f"retired: {detector_version_retire(version_id=version_id).label}")
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
