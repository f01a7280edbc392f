import time

from django.core.management.base import BaseCommand, CommandError

from storage.s3 import StorageError, storage_ensure_bucket


class Command(BaseCommand):
    help = "Create the S3 bucket if it is missing (waits up to --wait seconds for the server)."

    def add_arguments(self, parser):
        parser.add_argument("--wait", type=float, default=30.0)

    def handle(self, *args, wait: float, **options):
        deadline = time.monotonic() + wait
        while True:
            try:
                created = storage_ensure_bucket()
                break
            except StorageError as exc:
                if time.monotonic() > deadline:
                    raise CommandError(f"storage unreachable: {exc}") from exc
                time.sleep(1)
        self.stdout.write("bucket created" if created else "bucket exists")
