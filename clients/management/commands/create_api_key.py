from django.core.management.base import BaseCommand

from clients.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a client (made if missing). The key is printed alone on the last line, once."

    def add_arguments(self, parser):
        parser.add_argument("name", help="the client's name")

    def handle(self, *args, name: str, **options):
        row, key = api_key_create(client_name=name)
        self.stderr.write(f"client {row.client.name!r}: key {row.prefix}… created; store it now, it is not kept")
        self.stdout.write(key)
