"""Create an integration's API token (or a new one for an existing integration). Printed once."""

from django.core.management.base import BaseCommand

from rewards.services import integration_token_create


class Command(BaseCommand):
    help = "Create an API token for an integration NAME; the token is printed once and stored hashed."

    def add_arguments(self, parser):
        parser.add_argument("name", help="The integration's name, e.g. 'Shop POS'.")

    def handle(self, *args, name, **options):
        integration, token = integration_token_create(name=name)
        self.stderr.write(f"Token for integration {integration.name!r} (shown once, store it safely):")
        self.stdout.write(token)
