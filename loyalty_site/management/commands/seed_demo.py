"""Seed the demo: logins first, then each app's data in layer order. Idempotent."""

from django.core.management.base import BaseCommand

from accounts.demo import demo_logins_ensure


class Command(BaseCommand):
    help = "Create demo data and logins (safe to run again)."

    def handle(self, *args, **options):
        logins = demo_logins_ensure()
        self.stdout.write(self.style.SUCCESS("Demo data ready. Logins:"))
        for role, username, password in logins:
            self.stdout.write(f"  {role:<16} {username:<12} {password}")
