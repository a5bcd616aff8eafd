"""Import purchase history from a CSV file; exit 1 when some rows were bad (the good ones are in)."""

from rewards.importing import purchases_import

from ._csv_import import CsvImportCommand


class Command(CsvImportCommand):
    help = (
        "Import purchases from a CSV file with columns customer, occurred_at, amount and optional "
        "external_id, currency, category. Re-running the same file adds nothing. Without --award-points "
        "the purchases are history only (no points)."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument(
            "--award-points",
            action="store_true",
            help=(
                "Award points for members' purchases made since they enrolled "
                "(slower: the ledger is written too)."
            ),
        )

    def run_import(self, options, **common):
        return purchases_import(award_points=options["award_points"], **common)

    def summary(self, report) -> str:
        return (
            f"import_purchases: {report.rows:,} rows: {report.created:,} purchases recorded, "
            f"{report.unchanged:,} already there, {report.bad:,} bad; "
            f"{report.customers_created:,} new customers; {report.points_awarded:,} points awarded. "
            f"{report.seconds:,.1f} s, {report.rows_per_second:,.0f} rows/s."
        )
