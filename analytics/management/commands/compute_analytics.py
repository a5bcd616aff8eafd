"""python manage.py compute_analytics [--as-of YYYY-MM-DD] [--rebuild] [--incremental]"""

import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from analytics import services


class Command(BaseCommand):
    help = "Compute the analytics snapshot (what the nightly job does), synchronously."

    def add_arguments(self, parser):
        parser.add_argument("--as-of", help="The last day included, YYYY-MM-DD (default: today).")
        parser.add_argument("--rebuild", action="store_true", help="Rebuild the daily rollup from scratch.")
        parser.add_argument(
            "--incremental",
            action="store_true",
            help="Only the incremental update (rollup and touched scores).",
        )

    def handle(self, *args, **options):
        if options["incremental"]:
            result = services.analytics_update()
            self.stdout.write(f"Incremental update: {result}")
            return
        as_of = None
        if options["as_of"]:
            try:
                as_of = dt.date.fromisoformat(options["as_of"])
            except ValueError as exc:
                raise CommandError(f"--as-of must be YYYY-MM-DD, not {options['as_of']!r}") from exc
        try:
            run = services.analytics_refresh(as_of=as_of, rebuild=options["rebuild"])
        except services.AnalyticsError as exc:
            raise CommandError(str(exc)) from exc
        phases = {k: v for k, v in run.timings.items() if isinstance(v, float)}
        seconds = sum(phases.values())
        self.stdout.write(
            self.style.SUCCESS(
                f"Analytics run {run.pk} as of {run.as_of}: {run.timings.get('shoppers')} shoppers, "
                f"{seconds:.1f} s ({', '.join(f'{k} {v}' for k, v in phases.items())})."
            )
        )
