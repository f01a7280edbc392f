from django.core.management.base import BaseCommand, CommandError

from clients.services import api_key_revoke


class Command(BaseCommand):
    help = "Revoke an API key by its prefix (the 8 characters after fda_)."

    def add_arguments(self, parser):
        parser.add_argument("prefix")

    def handle(self, *args, prefix: str, **options):
        if not api_key_revoke(prefix=prefix):
            raise CommandError(f"no active key with prefix {prefix}")
        self.stdout.write(f"revoked {prefix}")
