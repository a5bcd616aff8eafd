"""The history imports under bad input: broken CSV, wrong encodings, huge lines, truncated
files, NUL characters, values at their limits. Each bad line is reported by its number with
a reason, the good rows go in, the command exits 1 when it refused lines, and nothing
crashes or holds a whole file in memory. (tests/rewards/test_import.py: the imports' normal
work.)"""

import datetime as dt
import tracemalloc

import pytest
from django.core.management import CommandError
from django.utils import timezone

from accounts.models import Customer
from rewards import importing
from tests.rewards.test_import import HEADER, day, imported, run, write

pytestmark = pytest.mark.django_db


def ids() -> set[str]:
    return set(imported().values_list("external_id", flat=True))


def reported(err: str) -> list[str]:
    return err.strip().splitlines()


def good(external_id: str) -> str:
    return f"A,{day(1)},10,{external_id},,\n"


# --- Broken CSV ---------------------------------------------------------------------------


def test_an_unclosed_quote_is_reported_on_its_line_and_the_rows_it_swallowed_go_in(tmp_path):
    path = write(tmp_path, HEADER + good("p1") + f'A,{day(1)},10,"p2,,\n' + good("p3") + good("p4"))

    code, out, err = run("import_purchases", path)

    assert code == 1 and "3 purchases recorded" in out and "1 bad" in out
    assert reported(err) == [
        'line 3: expected 6 fields, found 4, over several lines (a quote (") not closed?); '
        "lines 4–5 read again as rows of their own"
    ]
    assert ids() == {"p1", "p3", "p4"}


def test_an_unclosed_quote_running_past_the_field_limit_loses_no_good_row(tmp_path):
    """In a big file the open quote swallows lines until the csv module's field limit."""
    rows = "".join(good(f"p{n}") for n in range(3, 40))
    path = write(tmp_path, HEADER + good("p1") + 'A,"unclosed,10,p2,,\n' + rows)

    bad = []
    report = importing.purchases_import(path=path, max_line_length=200, on_bad_row=bad.append)

    assert [row.line for row in bad] == [3]
    assert bad[0].reason.startswith("unreadable CSV: field larger than field limit (200); lines 4–")
    assert report.created == 38 and ids() == {"p1"} | {f"p{n}" for n in range(3, 40)}


def test_an_unclosed_quote_in_the_last_row_is_a_bad_row(tmp_path):
    path = write(tmp_path, HEADER + good("p1") + f'A,{day(1)},10,"p2,,\n')

    code, _out, err = run("import_purchases", path)

    assert code == 1 and reported(err) == ["line 3: expected 6 fields, found 4"]
    assert ids() == {"p1"}


def test_a_stray_quote_inside_a_value_is_that_value_s_error(tmp_path):
    path = write(tmp_path, HEADER + f'A,{day(1)},1"0,p1,,\n' + good("p2"))

    code, _out, err = run("import_purchases", path)

    assert code == 1 and reported(err) == ["line 2: amount is not a number: '1\"0'"]
    assert ids() == {"p2"}


def test_rows_with_missing_or_extra_fields_are_bad_and_empty_trailing_fields_are_not(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + f"A,{day(1)},10\n"  # missing fields
        + f"A,{day(1)},10,p2,DKK,coffee,surprise\n"  # an extra field with something in it
        + f"A,{day(1)},10,p3,DKK,coffee,,\n"  # trailing empty fields: a spreadsheet's export
        + "\n"  # a blank line is nothing
        + good("p4"),
    )

    code, out, err = run("import_purchases", path)

    assert code == 1 and "2 bad" in out
    assert reported(err) == ["line 2: expected 6 fields, found 3", "line 3: expected 6 fields, found 7"]
    assert ids() == {"p3", "p4"}


def test_a_file_without_a_header_is_refused_before_anything_is_written(tmp_path):
    path = write(tmp_path, good("p1") + good("p2"))

    with pytest.raises(CommandError, match="Missing required column") as refused:
        run("import_purchases", path)

    assert "The header has: a," in str(refused.value)
    assert not imported().exists() and not Customer.objects.exists()


def test_crlf_line_ends_and_a_missing_last_line_end_are_fine(tmp_path):
    path = write(tmp_path, (HEADER + good("p1") + good("p2")).replace("\n", "\r\n").rstrip("\r\n"))

    code, _out, err = run("import_purchases", path)

    assert (code, err) == (0, "") and ids() == {"p1", "p2"}


# --- A tiny file that claims to be huge -------------------------------------------------------


def test_a_file_announcing_a_billion_rows_is_read_for_what_it_holds(tmp_path):
    """The format has no count to trust: a line that claims one is just a bad row, and the
    import ends with the file, at once."""
    path = write(tmp_path, HEADER + "# 1000000000 rows follow\n" + good("p1"))

    code, out, err = run("import_purchases", path)

    assert code == 1 and "2 rows" in out and ids() == {"p1"}
    assert reported(err) == ["line 2: expected 6 fields, found 1"]


def test_a_count_line_instead_of_a_header_is_refused(tmp_path):
    path = write(tmp_path, "rows=1000000000\n" + good("p1"))

    with pytest.raises(CommandError, match="Missing required column"):
        run("import_purchases", path)
    assert not imported().exists()


def test_a_file_cut_off_mid_row_keeps_the_rows_before_the_cut(tmp_path):
    path = write(tmp_path, HEADER + good("p1") + good("p2") + f"A,{day(1)},1")

    code, _out, err = run("import_purchases", path)

    assert code == 1 and reported(err) == ["line 4: expected 6 fields, found 3"]
    assert ids() == {"p1", "p2"}


def test_a_file_cut_off_inside_a_multibyte_character_is_a_bad_line(tmp_path):
    path = tmp_path / "cut.csv"
    path.write_bytes((HEADER + good("p1") + f"Søren,{day(1)},10,p2,,kaffe-ø").encode()[:-1])

    code, _out, err = run("import_purchases", path)

    assert code == 1 and reported(err) == ["line 3: not valid utf-8 text (try --encoding)"]
    assert ids() == {"p1"}


# --- NUL characters -----------------------------------------------------------------------------


@pytest.mark.parametrize("row", ["A\x00B,{d},10,p2,,", "A,{d},10,p2,,kaf\x00fe", "A,{d},10\x00,p2,,"])
def test_a_nul_character_is_a_bad_line_not_a_database_error(tmp_path, row):
    """PostgreSQL refuses NUL in text: caught on reading, the chunk's good rows go in."""
    path = write(tmp_path, HEADER + good("p1") + row.format(d=day(1)) + "\n" + good("p3"))

    code, _out, err = run("import_purchases", path)

    assert code == 1 and reported(err) == ["line 3: contains a NUL character"]
    assert ids() == {"p1", "p3"}


@pytest.mark.parametrize("ref", ["A\x07B", "\u200b", "A\u2028B"], ids=["bell", "zero-width-only", "line-sep"])
def test_a_customer_reference_the_api_would_refuse_is_a_bad_line(tmp_path, ref):
    """The same rule as the API's: control characters, or nothing but invisible ones."""
    path = write(tmp_path, HEADER + good("p1") + f"{ref},{day(1)},10,p2,,\n" + good("p3"))

    code, _out, err = run("import_purchases", path)

    assert code == 1
    assert reported(err) == ["line 3: customer reference holds control characters or only invisible ones"]
    assert ids() == {"p1", "p3"}


def test_a_nul_character_in_a_customer_row(tmp_path):
    path = write(tmp_path, "external_ref,name\nC1,Ann\nC2,B\x00o\nC3,Carl\n")

    code, _out, err = run("import_customers", path)

    assert code == 1 and reported(err) == ["line 3: contains a NUL character"]
    assert set(Customer.objects.values_list("external_ref", flat=True)) == {"C1", "C3"}


# --- Encodings ----------------------------------------------------------------------------------


def test_a_utf16_file_read_as_utf8_is_refused_naming_the_encoding_and_imports_with_it(tmp_path):
    text = HEADER + f"Søren,{day(1)},10,p1,,kaffe-ø\n" + good("p2")
    path = write(tmp_path, text, encoding="utf-16")  # with its byte order mark

    with pytest.raises(CommandError, match="UTF-16 byte order mark.*--encoding utf-16"):
        run("import_purchases", path)
    assert not imported().exists()

    code, _out, err = run("import_purchases", path, "--encoding", "utf-16")
    assert (code, err) == (0, "") and ids() == {"p1", "p2"}
    assert imported().get(external_id="p1").customer.external_ref == "Søren"


def test_a_utf16_file_without_byte_order_mark_is_refused_with_a_hint(tmp_path):
    path = write(tmp_path, HEADER + good("p1"), encoding="utf-16-le")

    with pytest.raises(CommandError, match="NUL character .a UTF-16 file. try --encoding utf-16"):
        run("import_purchases", path)

    code, _out, _err = run("import_purchases", path, "--encoding", "utf-16-le")
    assert code == 0 and ids() == {"p1"}


def test_a_broken_utf16_pair_is_a_bad_line_not_a_stop(tmp_path):
    """A lone high surrogate followed by an ASCII character: bytes that even Python's
    "surrogateescape" cannot carry."""
    broken = f"A,{day(1)},10,p2,,".encode("utf-16-le") + b"\x00\xd8A\x00" + "\n".encode("utf-16-le")
    path = tmp_path / "broken.csv"
    path.write_bytes(
        (HEADER + good("p1")).encode("utf-16")  # with its byte order mark
        + broken
        + good("p3").encode("utf-16-le")
    )

    code, _out, err = run("import_purchases", path, "--encoding", "utf-16")

    assert code == 1 and reported(err) == ["line 3: not valid utf-16 text (try --encoding)"]
    assert ids() == {"p1", "p3"}


def test_a_utf8_file_with_byte_order_mark_read_as_latin1_is_refused_naming_utf8(tmp_path):
    path = write(tmp_path, "\ufeff" + HEADER + good("p1"))

    with pytest.raises(
        CommandError, match="UTF-8 byte order mark but is read as latin-1: .*--encoding utf-8"
    ):
        run("import_purchases", path, "--encoding", "latin-1")
    assert not imported().exists()


def test_a_latin1_customer_file_read_as_utf8_reports_the_lines_and_keeps_the_rest(tmp_path):
    path = write(tmp_path, "external_ref,name\nC1,Søren\nC2,Ann\n", encoding="latin-1")

    code, _out, err = run("import_customers", path)

    assert code == 1 and reported(err) == ["line 2: not valid utf-8 text (try --encoding)"]
    assert list(Customer.objects.values_list("external_ref", flat=True)) == ["C2"]


def test_unicode_everywhere_is_kept_as_written(tmp_path):
    refs = ["‮שלום-42", "عميل-٧", "👩‍👩‍👧‍👦", "ลูกค้า", "🇩🇰-C1"]
    path = write(
        tmp_path, HEADER + "".join(f"{ref},{day(1)},10,u{n},,☕ kaffe\n" for n, ref in enumerate(refs))
    )

    code, _out, err = run("import_purchases", path)

    assert (code, err) == (0, "")
    assert set(imported().values_list("customer__external_ref", flat=True)) == set(refs)


# --- Huge lines, bounded memory ----------------------------------------------------------------


def test_a_field_of_several_megabytes_is_reported_and_memory_stays_bounded(tmp_path):
    size = 6 * importing.MAX_LINE_LENGTH  # 6 M characters (12 MB in memory) in one quoted field
    path = write(tmp_path, HEADER + good("p1") + f'A,{day(1)},10,p2,,"{"€" * size}"\n' + good("p3"))

    tracemalloc.start()
    try:
        code, _out, err = run("import_purchases", path)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert code == 1
    assert reported(err) == [f"line 3: line longer than {importing.MAX_LINE_LENGTH:,} characters"]
    assert ids() == {"p1", "p3"}
    # The file is 18 MB (€ is three bytes): never held whole, nor its long line.
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_a_field_of_several_megabytes_over_many_lines_is_reported_and_memory_stays_bounded(tmp_path):
    chunk = "x" * 1000 + "\n"
    big = chunk * (24 * importing.MAX_LINE_LENGTH // len(chunk))  # 24 M characters, quoted
    path = write(tmp_path, HEADER + good("p1") + f'A,{day(1)},10,p2,,"{big}"\n' + good("p3"))

    tracemalloc.start()
    try:
        # Its lines are bad rows, each kept with its fields until its chunk is written.
        code, _out, err = run("import_purchases", path, "--chunk-size", "500")
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert code == 1
    lines = reported(err)
    assert lines[0].startswith("line 3: unreadable CSV: field larger than field limit")
    assert ids() >= {"p1", "p3"} and "p2" not in ids()
    # Some of the field is kept to read its lines again (3 × the limit), never all of it.
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MiB"


# --- Values at their limits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "stored"),
    [
        ("0", "0.00"),
        ("0.00", "0.00"),
        ("-0", "0.00"),
        ("0.01", "0.01"),
        ("9999999999.99", "9999999999.99"),
        ("1E3", "1000.00"),
        (" 12.5 ", "12.50"),
    ],
)
def test_amounts_at_the_limits_that_are_good(tmp_path, amount, stored):
    code, _out, err = run("import_purchases", write(tmp_path, HEADER + f'A,{day(1)},"{amount}",p1,,\n'))

    assert (code, err) == (0, "")
    assert str(imported().get().amount) == stored


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        ("10000000000", "amount is too large (10,000,000,000 or more)"),
        ("9999999999.999", "amount has more than 2 decimals"),
        ("0.001", "amount has more than 2 decimals"),
        ("-0.01", "amount is negative"),
        ("NaN", "amount is not a number"),
        ("-Infinity", "amount is not a number"),
        ("1E+999999999", "amount is too large"),
        ("1e-999999999", "amount has more than 2 decimals"),
        ("1,000.00", "amount is not a number"),
        ("12 kr", "amount is not a number"),
        ("", "amount is missing"),
    ],
)
def test_amounts_past_the_limits_are_bad_rows(tmp_path, amount, reason):
    code, _out, err = run(
        "import_purchases", write(tmp_path, HEADER + f'A,{day(1)},"{amount}",p1,,\n' + good("p2"))
    )

    assert code == 1 and len(reported(err)) == 1
    assert reported(err)[0].startswith(f"line 2: {reason}")
    assert ids() == {"p2"}


def _in_a_while(**delta) -> str:
    return (timezone.now() + dt.timedelta(**delta)).isoformat()


@pytest.mark.parametrize(
    "moment",
    ["2000-01-01T00:00:00+00:00", "2000-01-01T01:00:00+01:00", "2024-02-29", "{soon}"],
)
def test_dates_at_the_limits_that_are_good(tmp_path, moment):
    moment = moment.format(soon=_in_a_while(hours=23))
    code, _out, err = run("import_purchases", write(tmp_path, HEADER + f"A,{moment},10,p1,,\n"))

    assert (code, err) == (0, "") and ids() == {"p1"}


@pytest.mark.parametrize(
    ("moment", "reason"),
    [
        ("1999-12-31T23:59:59+00:00", "occurred_at is before 2000-01-01"),
        ("1000-01-01", "occurred_at is before 2000-01-01"),
        ("0001-01-01", "occurred_at is out of range"),
        ("9999-12-31T23:59:59-05:00", "occurred_at is out of range"),
        ("9999-12-31", "occurred_at is more than a day in the future"),
        ("{later}", "occurred_at is more than a day in the future"),
        ("2023-02-29", "occurred_at is not a date"),
        ("2026-11-23T25:00", "occurred_at is not a date"),
        ("23/11/2026", "occurred_at is not a date"),
        ("", "occurred_at is missing"),
    ],
)
def test_dates_past_the_limits_are_bad_rows(tmp_path, moment, reason):
    moment = moment.format(later=_in_a_while(hours=25))
    code, _out, err = run("import_purchases", write(tmp_path, HEADER + f"A,{moment},10,p1,,\n" + good("p2")))

    assert code == 1 and len(reported(err)) == 1
    assert reported(err)[0].startswith(f"line 2: {reason}")
    assert ids() == {"p2"}


def test_customer_dates_at_and_past_their_limits(tmp_path):
    today = timezone.localdate()
    path = write(
        tmp_path,
        "external_ref,birthday,enrolled_at\n"
        "C1,1900-01-01,2000-01-01T00:00:00+00:00\n"
        f"C2,{today.isoformat()},\n"
        "C3,2024-02-29,\n"
        "C4,1899-12-31,\n"
        f"C5,{(today + dt.timedelta(days=1)).isoformat()},\n"
        "C6,2023-02-29,\n"
        "C7,,1999-12-31T23:59:59+00:00\n"
        "C8,,0001-01-01\n",
    )

    code, out, err = run("import_customers", path)

    assert code == 1 and "5 bad" in out
    assert [line.split(":")[0] for line in reported(err)] == [f"line {n}" for n in range(5, 10)]
    assert "before 2000-01-01" in reported(err)[3] and "out of range" in reported(err)[4]
    assert set(Customer.objects.values_list("external_ref", flat=True)) == {"C1", "C2", "C3"}


def test_a_customer_reference_at_its_length_limit(tmp_path):
    path = write(tmp_path, HEADER + f"{'R' * 64},{day(1)},10,p1,,\n{'R' * 65},{day(1)},10,p2,,\n")

    code, _out, err = run("import_purchases", path)

    assert code == 1 and reported(err) == ["line 3: customer reference is longer than 64 characters"]
    assert ids() == {"p1"}
