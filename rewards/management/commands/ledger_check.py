"""Check the ledger's invariants; exit 1 with a report on any violation."""

import sys

from django.core.management.base import BaseCommand

from rewards.ledger_check import ledger_violations


class Command(BaseCommand):
    help = "Check that every balance equals its entries and its lots; exit 1 on any violation."

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=1000, help="Report at most this many accounts.")

    def handle(self, *args, limit, **options):
        violations = ledger_violations(limit=limit)
        if not violations:
            self.stdout.write("ledger_check: ok, every account balances")
            return
        for violation in violations:
            self.stdout.write(f"customer {violation['customer_id']}: " + "; ".join(violation["problems"]))
        self.stdout.write(f"ledger_check: {len(violations)} account(s) violate the invariants")
        sys.exit(1)
