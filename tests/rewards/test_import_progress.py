"""The progress the import commands show on stderr: how much of the file was read, rows, bad rows,
rows a second and the time left; a line every N rows in a log, a bar redrawn in place on a terminal."""

import io
import re

import pytest
from django.core.management import call_command
from django.core.management.base import OutputWrapper

from rewards.importing import ImportReport
from rewards.management.commands._csv_import import ImportProgress
from tests.rewards.test_import import HEADER, day

LINE = re.compile(
    r"(?P<percent>\d+\.\d) % of [\d.,]+ (?:bytes|kB), (?P<rows>[\d,]+) rows, (?P<bad>[\d,]+) bad, "
    r"[\d.,]+ s, [\d,]+ rows/s, ETA \d+:\d\d"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Terminal(io.StringIO):
    """What a command writes to a terminal."""

    def isatty(self) -> bool:
        return True


def purchases_file(tmp_path, *, rows: int = 3000, bad_lines: tuple[int, ...] = ()):
    """`rows` purchases, big enough for the bytes read to show between chunks of 1,000 rows (the
    reading runs ahead by a buffer of 8 KB); the rows on `bad_lines` (line numbers, the header is
    line 1) have an amount that is not a number."""
    lines = [
        f"A{i % 4},{day(i % 20 + 1)},{'ten' if i + 2 in bad_lines else i + 1},p{i},DKK,groceries\n"
        for i in range(rows)
    ]
    path = tmp_path / "purchases.csv"
    path.write_text(HEADER + "".join(lines))
    return path


def read_through(path, rows: int):
    """The percentage of the file up to the end of its `rows`th row, as the progress shows it once
    that row was read: the reading runs ahead by up to a buffer (8 KB)."""
    data = path.read_bytes()
    end = 0
    for _line in range(rows + 1):  # and the header
        end = data.index(b"\n", end) + 1
    return pytest.approx(100 * (end + 8192 / 2) / len(data), abs=100 * (8192 / 2) / len(data) + 0.1)


def run(command: str, path, *args, stderr=None) -> tuple[int, str]:
    """(exit code, stderr) of an import command."""
    stderr = stderr if stderr is not None else io.StringIO()
    try:
        call_command(command, str(path), *args, stdout=io.StringIO(), stderr=stderr)
    except SystemExit as exc:
        return exc.code, stderr.getvalue()
    return 0, stderr.getvalue()


def progress(err: str) -> list[tuple[float, int, int]]:
    """(percent, rows, bad) of each progress line."""
    found = [LINE.fullmatch(line) for line in err.splitlines()]
    return [
        (float(m["percent"]), int(m["rows"].replace(",", "")), int(m["bad"].replace(",", "")))
        for m in found
        if m
    ]


def screen(output: str) -> list[str]:
    """The lines a terminal shows after `output`: a carriage return goes back to the line's start,
    where the characters after it overwrite those there."""
    lines = []
    for line in ANSI.sub("", output).split("\n"):
        shown: list[str] = []
        for piece_number, piece in enumerate(line.split("\r")):
            start = 0 if piece_number else len(shown)
            shown[start : start + len(piece)] = piece
        lines.append("".join(shown).rstrip())
    return lines


# --- In a log: a line every N rows ------------------------------------------------------------


@pytest.mark.django_db
def test_purchases_progress_lines_count_rows_and_bad_rows_up_to_100_percent_of_the_file(tmp_path):
    path = purchases_file(tmp_path, bad_lines=(5, 1800))

    code, err = run("import_purchases", path, "--chunk-size", "1000", "--progress-every", "1")

    assert code == 1  # some rows were bad
    lines = progress(err)
    assert [(rows, bad) for _percent, rows, bad in lines] == [(1000, 1), (2000, 2), (3000, 2)]
    assert [percent for percent, _rows, _bad in lines] == [
        read_through(path, 1000),
        read_through(path, 2000),
        100.0,
    ]
    assert "line 5: amount is not a number: 'ten'" in err.splitlines()


@pytest.mark.django_db(transaction=True)
def test_progress_lines_of_a_file_read_by_a_child_process_reach_100_percent_with_the_final_counts(tmp_path):
    # Outside a transaction: two writers, the file read by a child process, whose chunks carry the
    # bytes read; the bad rows are counted as written chunks are collected, so a last line shows them.
    path = purchases_file(tmp_path, rows=4000, bad_lines=(3, 3999))

    code, err = run("import_purchases", path, "--chunk-size", "1000", "--progress-every", "1000")

    assert code == 1
    lines = progress(err)
    assert [rows for _percent, rows, _bad in lines] == [1000, 2000, 3000, 4000, 4000]
    assert lines[-1] == (100.0, 4000, 2)
    assert [percent for percent, _rows, _bad in lines] == [
        read_through(path, 1000),
        read_through(path, 2000),
        read_through(path, 3000),
        100.0,
        100.0,
    ]


@pytest.mark.django_db
def test_customers_progress_lines_every_n_rows(tmp_path):
    path = tmp_path / "customers.csv"
    path.write_text(
        "external_ref,birthday\n" + "".join(f"C{i},{'no' if i == 7 else ''}\n" for i in range(25))
    )

    code, err = run("import_customers", path, "--chunk-size", "5", "--progress-every", "10")

    assert code == 1
    # After the chunks that pass 10 and 20 rows, then the end.
    assert [(rows, bad) for _percent, rows, bad in progress(err)] == [(10, 1), (20, 1), (25, 1)]
    assert progress(err)[-1][0] == 100.0


@pytest.mark.django_db
def test_a_file_smaller_than_progress_every_shows_no_progress(tmp_path):
    code, err = run("import_purchases", purchases_file(tmp_path, rows=30))

    assert (code, err) == (0, "")


@pytest.mark.django_db
@pytest.mark.parametrize("stderr", [io.StringIO, Terminal])
def test_verbosity_0_shows_no_progress(tmp_path, stderr):
    code, err = run(
        "import_purchases",
        purchases_file(tmp_path),
        *("--chunk-size", "1000", "--progress-every", "1", "-v", "0"),
        stderr=stderr(),
    )

    assert (code, err) == (0, "")


# --- On a terminal: a bar redrawn in place ----------------------------------------------------


@pytest.mark.django_db
def test_on_a_terminal_a_bar_is_redrawn_in_place_ends_at_100_percent_and_a_newline(tmp_path):
    code, err = run("import_purchases", purchases_file(tmp_path), "--chunk-size", "1000", stderr=Terminal())

    assert code == 0
    assert err.startswith("\r[#") and err.endswith("\n") and err.count("\n") == 1
    assert err.count("\r") >= 2  # the first chunk's bar, redrawn at the end
    assert re.fullmatch(r"\[#+\] 100\.0 %  3,000 rows  0 bad  [\d,]+ rows/s  ETA 0:00", screen(err)[0])
    assert screen(err)[1:] == [""]


@pytest.mark.django_db
def test_on_a_terminal_bad_rows_are_written_above_the_bar(tmp_path):
    path = purchases_file(tmp_path, bad_lines=(1500,))

    code, err = run("import_purchases", path, "--chunk-size", "1000", stderr=Terminal())

    assert code == 1
    assert err.startswith("\r[#")  # the first chunk's bar, then wiped for the bad row of the second
    shown = screen(err)
    assert shown[0] == "line 1500: amount is not a number: 'ten'"
    assert re.fullmatch(r"\[#+\] 100\.0 %  3,000 rows  1 bad  .*", shown[1])
    assert shown[2:] == [""]


def report(**values) -> ImportReport:
    return ImportReport(**{"rows": 100, "seconds": 10.0, "file_size": 1000, "bytes_read": 250} | values)


def test_the_bar_is_redrawn_at_most_every_interval_then_at_the_end():
    terminal = Terminal()
    now = [0.0]
    shown = ImportProgress(OutputWrapper(terminal), every=1, interval=0.2, clock=lambda: now[0])

    for tick in range(10):  # a chunk every 0.05 s
        now[0] = tick * 0.05
        shown(report(bytes_read=100 * (tick + 1)))
    assert terminal.getvalue().count("\r") == 3  # at 0, 0.2 and 0.4 s
    assert "\n" not in terminal.getvalue()
    shown.finish(report(bytes_read=1000))

    assert terminal.getvalue().count("\r") == 4 and terminal.getvalue().endswith("\n")
    assert screen(terminal.getvalue())[0].startswith(f"[{'#' * 30}] 100.0 %")


def test_the_bar_fits_the_terminal_less_one_character_never_to_wrap():
    shown = ImportProgress(OutputWrapper(Terminal()), every=1)

    assert shown.bar(report(), columns=100) == (
        "[#######-----------------------]  25.0 %  100 rows  0 bad  10 rows/s  ETA 0:30"
    )
    assert shown.bar(report(), columns=60) == "[##---------]  25.0 %  100 rows  0 bad  10 rows/s  ETA 0:30"
    assert shown.bar(report(), columns=30) == "25.0 %  100 rows  0 bad  10 r"
    assert shown.bar(report(file_size=0, seconds=75.0), columns=80) == "100 rows  0 bad  1 rows/s  1:15"


def test_a_line_says_how_much_of_the_file_was_read_and_the_time_left():
    shown = ImportProgress(OutputWrapper(io.StringIO()), every=1)

    assert shown.line(report(file_size=2_500_000_000, bytes_read=625_000_000, rows=12_345_678, bad=3)) == (
        "25.0 % of 2.5 GB, 12,345,678 rows, 3 bad, 10.0 s, 1,234,568 rows/s, ETA 0:30"
    )
    # A pipe: no size, so no percentage and no time left.
    assert shown.line(report(file_size=0)) == "100 rows, 0 bad, 10.0 s, 10 rows/s"
    assert shown.line(report(bytes_read=999)).startswith("99.9 % of 1.0 kB")  # 100 % only at the end
