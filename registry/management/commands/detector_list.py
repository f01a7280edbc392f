from django.core.management.base import BaseCommand

from registry.models import DetectorVersion
from registry.services import detector_version_active


class Command(BaseCommand):
    help = "List registered detector versions."

    def handle(self, *args, **options):
        active = detector_version_active()
        for version in DetectorVersion.objects.all():
            state = "active " if active and active.id == version.id else ("retired" if version.retired_at else "       ")
            self.stdout.write(f"{state} {version.label:40} {version.settings}")
