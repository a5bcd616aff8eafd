"""Import customers from a CSV file; exit 1 when some rows were bad (the good ones are in)."""

from rewards.importing import customers_import

from ._csv_import import CsvImportCommand


class Command(CsvImportCommand):
    help = (
        "Import customers from a CSV file with column external_ref and optional email, first_name, "
        "last_name (or name), birthday, enrolled_at, language, marketing_consent. Existing customers "
        "take the values the file gives; enrolled_at makes a member without a signup bonus."
    )

    def run_import(self, options, **common):
        return customers_import(**common)

    def summary(self, report) -> str:
        return (
            f"import_customers: {report.rows:,} rows: {report.created:,} customers created, "
            f"{report.updated:,} updated, {report.unchanged:,} unchanged, {report.bad:,} bad; "
            f"{report.members_created:,} enrolled as members. "
            f"{report.seconds:,.1f} s, {report.rows_per_second:,.0f} rows/s."
        )
