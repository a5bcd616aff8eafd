"""Import purchase history from a CSV file; exit 1 when some rows were bad (the good ones are in)."""

import sys

from django.core.management.base import BaseCommand, CommandError

from rewards.importing import CHUNK_SIZE, BadRowLog, ImportFileError, progress_line, purchases_import


class Command(BaseCommand):
    help = (
        "Import purchases from a CSV file with columns customer, occurred_at, amount and optional "
        "external_id, currency, category. Re-running the same file adds nothing. Without --award-points "
        "the purchases are history only (no points)."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="The CSV file (header line first).")
        parser.add_argument(
            "--award-points",
            action="store_true",
            help="Award points for members' purchases made since they enrolled (slower: one at a time).",
        )
        parser.add_argument("--encoding", default="utf-8", help="The file's text encoding (default utf-8).")
        parser.add_argument("--errors", metavar="FILE", help="Write every bad row to this CSV file.")
        parser.add_argument(
            "--chunk-size", type=int, default=CHUNK_SIZE, help="Rows written per transaction."
        )
        parser.add_argument(
            "--progress-every", type=int, default=100_000, help="A progress line every N rows (0: none)."
        )
        parser.add_argument("--show-errors", type=int, default=1000, help="Print at most N bad rows.")

    def handle(self, *args, **options):
        try:
            with BadRowLog(
                stream=self.stderr, errors_path=options["errors"], show=options["show_errors"]
            ) as log:
                report = purchases_import(
                    path=options["file"],
                    encoding=options["encoding"],
                    award_points=options["award_points"],
                    chunk_size=max(1, options["chunk_size"]),
                    on_bad_row=log,
                    on_progress=lambda report: self.stderr.write(progress_line(report)),
                    progress_every=options["progress_every"],
                )
        except (ImportFileError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        if report.ignored_columns:
            self.stderr.write(f"Ignored columns: {', '.join(report.ignored_columns)}")
        self.stdout.write(
            f"import_purchases: {report.rows:,} rows: {report.created:,} purchases recorded, "
            f"{report.unchanged:,} already there, {report.bad:,} bad; "
            f"{report.customers_created:,} new customers; {report.points_awarded:,} points awarded. "
            f"{report.seconds:,.1f} s, {report.rows_per_second:,.0f} rows/s."
        )
        if report.bad:
            sys.exit(1)
