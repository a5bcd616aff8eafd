"""What the CSV import commands share: the options, error handling, progress and exit code."""

import gc
import sys

from django.core.management.base import BaseCommand, CommandError

from rewards.importing import CHUNK_SIZE, BadRowLog, ImportFileError, progress_line

# How long a thread waiting for the GIL waits before asking for it, during an import
# (sys.setswitchinterval; Python's default is 5 ms).
SWITCH_INTERVAL = 0.001


class CsvImportCommand(BaseCommand):
    """Subclasses implement `run_import(options, **common)` and `summary(report)`."""

    def add_arguments(self, parser):
        parser.add_argument("file", help="The CSV file (header line first).")
        parser.add_argument("--encoding", default="utf-8", help="The file's text encoding (default utf-8).")
        parser.add_argument("--errors", metavar="FILE", help="Write every bad row to this CSV file.")
        parser.add_argument(
            "--chunk-size", type=int, default=CHUNK_SIZE, help="Rows written per transaction."
        )
        parser.add_argument(
            "--progress-every", type=int, default=100_000, help="A progress line every N rows (0: none)."
        )
        parser.add_argument("--show-errors", type=int, default=1000, help="Print at most N bad rows.")

    def run_import(self, options, **common):
        raise NotImplementedError

    def summary(self, report) -> str:
        raise NotImplementedError

    def handle(self, *args, **options):
        # The objects alive now (Django's, its apps') stay out of the garbage collector's full
        # collections, which the millions of short-lived row objects of an import set off: a
        # sixth of the command's CPU. Unless someone else froze objects (a pre-forking server).
        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        # The parser thread holds the GIL while it works; a writer thread whose query has returned
        # waits for it up to this interval (5 ms by default) before it sends the next statement,
        # about ten times a chunk, with PostgreSQL idle meanwhile: 46,000 → 49,500 rows a second.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, SWITCH_INTERVAL))
        try:
            self._handle(options)
        finally:
            sys.setswitchinterval(switch_interval)
            if freeze:
                gc.unfreeze()

    def _handle(self, options):
        try:
            with BadRowLog(
                stream=self.stderr, errors_path=options["errors"], show=options["show_errors"]
            ) as log:
                report = self.run_import(
                    options,
                    path=options["file"],
                    encoding=options["encoding"],
                    chunk_size=max(1, options["chunk_size"]),
                    on_bad_row=log,
                    on_progress=lambda report: self.stderr.write(progress_line(report)),
                    progress_every=options["progress_every"],
                )
        except (ImportFileError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        if report.ignored_columns:
            self.stderr.write(f"Ignored columns: {', '.join(report.ignored_columns)}")
        self.stdout.write(self.summary(report))
        if report.bad:
            sys.exit(1)
