"""python manage.py analytics_report --json: the latest snapshot as JSON."""

import json

from django.core.management.base import BaseCommand, CommandError

from analytics import selectors


class Command(BaseCommand):
    help = "Print the latest analytics snapshot: CRR, churn, RPR, cohorts, CLV models, NPS, CSAT, effect."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="As JSON (the only format for now).")

    def handle(self, *args, **options):
        run = selectors.run_latest()
        if run is None:
            raise CommandError("No analytics run yet: run `python manage.py compute_analytics` first.")
        self.stdout.write(json.dumps(selectors.report(run), indent=2, ensure_ascii=False, default=str))
