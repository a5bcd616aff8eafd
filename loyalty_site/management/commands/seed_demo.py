"""Seed the demo: logins first, then each app's data in layer order. Idempotent."""

import time

from django.core.management.base import BaseCommand

from accounts.demo import demo_logins_ensure
from analytics.demo import demo_analytics_ensure
from campaigns.demo import demo_campaigns_ensure
from rewards.demo import BRAND, POS_NAME, demo_loyalty_ensure


class Command(BaseCommand):
    help = "Create demo data and logins (safe to run again)."

    def add_arguments(self, parser):
        parser.add_argument("--customers", type=int, default=700, help="How many customers (default 700).")
        parser.add_argument("--months", type=int, default=20, help="Months of purchase history (default 20).")
        parser.add_argument("--seed", type=int, default=42, help="Seed of the random history (default 42).")

    def handle(self, *args, **options):
        started = time.monotonic()
        logins = demo_logins_ensure()
        report = demo_loyalty_ensure(
            customers=options["customers"],
            months=options["months"],
            seed=options["seed"],
            log=lambda message: self.stdout.write(f"  {message}"),
        )
        analytics_lines = demo_analytics_ensure(months=options["months"], seed=options["seed"])
        campaign_lines = demo_campaigns_ensure()
        self.stdout.write(f"{BRAND} demo ({time.monotonic() - started:.1f} s):")
        for line in [*report.lines, *analytics_lines, *campaign_lines]:
            self.stdout.write(f"  {line}")
        if report.token:
            self.stdout.write(
                self.style.WARNING(
                    f'API token of "{POS_NAME}" (shown once; only its hash is kept): {report.token}'
                )
            )
        self.stdout.write(self.style.SUCCESS("Demo data ready. Logins:"))
        for role, username, password in logins:
            self.stdout.write(f"  {role:<16} {username:<12} {password}")
