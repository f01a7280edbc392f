from django.core.management.base import BaseCommand

from clients.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a client (made if missing). The key is printed alone on the last line, once."

    def add_arguments(self, parser):
        parser.add_argument("name", help="the client's name")
        parser.add_argument(
            "--operator", action="store_true", help="make the client an operator: its keys may manage rollouts (/api/v1/rollouts/)"
        )

    def handle(self, *args, name: str, operator: bool = False, **options):
        row, key = api_key_create(client_name=name, operator=operator)
        role = "operator" if row.client.is_operator else "client"
        self.stderr.write(f"{role} {row.client.name!r}: key {row.prefix}… created; store it now, it is not kept")
        self.stdout.write(key)
