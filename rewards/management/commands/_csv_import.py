"""What the CSV import commands share: the options, error handling, progress and exit code."""

import gc
import os
import sys
import time

from django.core.management.base import BaseCommand, CommandError

from rewards.importing import CHUNK_SIZE, BadRowLog, ImportFileError, ImportReport

# How long a thread waiting for the GIL waits before asking for it, during an import
# (sys.setswitchinterval; Python's default is 5 ms).
SWITCH_INTERVAL = 0.001
# On a terminal the progress bar is redrawn at most this often (seconds).
REDRAW_INTERVAL = 0.2
BAR_WIDTH = 30


def _as_is(text: str) -> str:
    """Progress is not an error: not in the error colour Django gives stderr on a terminal."""
    return text


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{seconds:02}" if hours else f"{minutes}:{seconds:02}"


def _size(count: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:,} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


class ImportProgress:
    """An import's progress on the command's stderr (Django's OutputWrapper), from the report it is
    handed once a chunk (`on_progress`): how much of the file was read, rows, bad rows, rows a
    second and the time left, estimated from the bytes still to read.

    On a terminal, a bar redrawn in place (a carriage return) at most every `interval` seconds,
    whatever `every` is, and ended with a newline; elsewhere (a log, cron) a line every `every`
    rows, and a last one with the final counts if they moved since. All the formatting happens
    here, a chunk at a time: the import itself only counts.
    """

    def __init__(self, stream, *, every: int, interval: float = REDRAW_INTERVAL, clock=time.monotonic):
        self.stream = stream
        self.every = every
        self.terminal = stream.isatty()
        self.interval = interval
        self.clock = clock
        self._next_draw = 0.0
        self._drawn = 0  # characters of the bar on the screen (0: no bar there)
        self._shown: tuple[int, int, int] | None = None  # (rows, bad, bytes) the last line showed

    @property
    def rows_between_calls(self) -> int:
        """`progress_every` for the import: every chunk on a terminal (redraws go by the clock)."""
        return 1 if self.terminal and self.every > 0 else self.every

    def __call__(self, report: ImportReport) -> None:
        if not self.terminal:
            self._write(self.line(report), ending="\n")
            self._shown = (report.rows, report.bad, report.bytes_read)
            return
        now = self.clock()
        if now >= self._next_draw:
            self._next_draw = now + self.interval
            self._draw(report)

    def finish(self, report: ImportReport) -> None:
        """The import is done: the bar at its end on its own line; the last line, if lines were shown."""
        if self.terminal:
            self._draw(report)
            self.close()
        elif self._shown is not None and self._shown != (report.rows, report.bad, report.bytes_read):
            self(report)

    def close(self) -> None:
        """End the bar's line (what is written next starts on a line of its own)."""
        if self._drawn:
            self._write("", ending="\n")
            self._drawn = 0

    def clear(self) -> None:
        """Wipe the bar, for a message to take its line (it is drawn again below)."""
        if self._drawn:
            self._write("\r" + " " * self._drawn + "\r", ending="")
            self._drawn = 0
            self._next_draw = 0.0

    @staticmethod
    def _figures(report: ImportReport) -> tuple[float | None, str]:
        """The percentage read (None if the file's size is unknown) and the time left."""
        if not report.file_size:
            return None, ""
        read = min(report.bytes_read, report.file_size)
        percent = read * 1000 // report.file_size / 10  # rounded down: 100 % only at the end
        left = report.seconds * (report.file_size - read) / read if read else None
        return percent, (f"ETA {_duration(left)}" if left is not None else "ETA ?")

    def line(self, report: ImportReport) -> str:
        """The line for a log: `12.5 % of 1.2 GB, 1,000,000 rows, 3 bad, 19.8 s, 50,505 rows/s, ETA 2:19`."""
        percent, left = self._figures(report)
        counts = (
            f"{report.rows:,} rows, {report.bad:,} bad, {report.seconds:,.1f} s, "
            f"{report.rows_per_second:,.0f} rows/s"
        )
        if percent is None:
            return counts
        return f"{percent:.1f} % of {_size(report.file_size)}, {counts}, {left}"

    def bar(self, report: ImportReport, *, columns: int) -> str:
        """The bar for a terminal `columns` wide (kept a character narrower, never to wrap):
        `[#######-----------------------]  25.0 %  1,000,000 rows  3 bad  50,505 rows/s  ETA 1:00`."""
        percent, left = self._figures(report)
        counts = f"{report.rows:,} rows  {report.bad:,} bad  {report.rows_per_second:,.0f} rows/s"
        if percent is None:
            return f"{counts}  {_duration(report.seconds)}"[: columns - 1]
        text = f"{percent:5.1f} %  {counts}  {left}"
        width = min(BAR_WIDTH, columns - 1 - len(text) - 3)
        if width < 5:
            return text.lstrip()[: columns - 1]
        done = int(width * percent / 100)
        return f"[{'#' * done}{'-' * (width - done)}] {text}"

    def _draw(self, report: ImportReport) -> None:
        text = self.bar(report, columns=_columns(self.stream))
        # Padded over a longer bar drawn before.
        self._write("\r" + text.ljust(self._drawn), ending="")
        self._drawn = max(len(text), self._drawn)

    def _write(self, text: str, *, ending: str) -> None:
        self.stream.write(text, style_func=_as_is, ending=ending)
        self.stream.flush()


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # not a terminal after all (a test's stream)
        return 80


class _AboveTheProgress:
    """A stream for messages written while a progress bar may be on the screen: the bar makes way."""

    def __init__(self, stream, progress: ImportProgress):
        self.stream = stream
        self.progress = progress

    def write(self, message: str, *args, **kwargs) -> None:
        self.progress.clear()
        self.stream.write(message, *args, **kwargs)


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
            "--progress-every",
            type=int,
            default=100_000,
            help=(
                "Progress on stderr: a line every N rows, or on a terminal a bar redrawn in place "
                "(0 or -v 0: none)."
            ),
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
        every = options["progress_every"] if options["verbosity"] > 0 else 0
        progress = ImportProgress(self.stderr, every=max(0, every))
        try:
            with BadRowLog(
                stream=_AboveTheProgress(self.stderr, progress),
                errors_path=options["errors"],
                show=options["show_errors"],
            ) as log:
                report = self.run_import(
                    options,
                    path=options["file"],
                    encoding=options["encoding"],
                    chunk_size=max(1, options["chunk_size"]),
                    on_bad_row=log,
                    on_progress=progress if progress.every else None,
                    progress_every=progress.rows_between_calls,
                )
            if progress.every:
                progress.finish(report)
        except (ImportFileError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        finally:
            progress.close()
        if report.ignored_columns:
            self.stderr.write(f"Ignored columns: {', '.join(report.ignored_columns)}")
        self.stdout.write(self.summary(report))
        if report.bad:
            sys.exit(1)
