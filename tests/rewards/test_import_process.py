"""History imports whose file is read and parsed by a child process (PostgreSQL, several writers,
outside a transaction): the same purchases, counts and bad rows (lines, reasons, fields) as
reading in a thread of the importing process; the child's errors and death are the import's."""

import datetime as dt
import multiprocessing
import os
import threading

import pytest
from django.utils import timezone

from accounts.models import Customer
from rewards import importing, importing_process, services
from rewards.models import Purchase
from tests.factories import CustomerFactory
from tests.rewards.test_import_parallel import HEADER, day, mixed_file, recorded

pytestmark = pytest.mark.django_db(transaction=True)


def run(path, *, writers: int = 2, reader_process: bool = True, bad: list | None = None, **kwargs):
    kwargs.setdefault("chunk_size", 15)
    return importing.purchases_import(
        path=path,
        writers=writers,
        reader_process=reader_process,
        on_bad_row=(bad if bad is not None else []).append,
        **kwargs,
    )


def leftovers() -> list[str]:
    threads = [t.name for t in threading.enumerate() if t.name.startswith("import-")]
    return threads + [process.name for process in multiprocessing.active_children()]


def broken_file(tmp_path):
    """Every kind of bad row among good ones, over several chunks of 15 rows, in bytes."""
    good = [f"M{i % 5},{day(i % 30 + 1)},{i + 1}.50,q{i},,{'tea' if i % 3 else ''}\n" for i in range(120)]
    lines = [line.encode() for line in good]
    lines[4] = f"M1,{day(1)},1,q4,DKK,tea,surprise\n".encode()  # an extra field with something in it
    lines[9] = f'M1,{day(1)},1,"q9,,\n'.encode()  # a quote never closed: swallows lines 12-13
    lines[20] = f"M1,{day(1)},1,q\x0020,,\n".encode()  # a NUL character
    lines[31] = b"M1," + day(1).encode() + b",1,q\xff31,,\n"  # not UTF-8
    lines[40] = f"M1,{day(1)},-3,q40,,\n".encode()
    lines[41] = f"M1,{day(-9)},3,q41,,\n".encode()
    lines[50] = f"M1,{day(1)},3,q{'x' * 300},,\n".encode()  # longer than the line limit
    lines[60] = good[58].encode()  # q58 again, the same data, two rows on
    lines[61] = f"M2,{day(1)},7,q59,,\n".encode()  # q59 again with other data, two rows on
    lines[75] = f"M3,{day(1)},8,q2,,\n".encode()  # q2 again with other data, chunks later
    lines[90] = f"N{9},{day(1)},8,,,\n".encode()  # no id: one from its content
    lines[105] = lines[90]  # the same row again, chunks later
    path = tmp_path / "broken.csv"
    path.write_bytes(HEADER.encode() + b"".join(lines))
    return path


def reported(bad: list) -> list[tuple]:
    return [(row.line, row.reason, row.fields) for row in bad]


def test_reading_in_a_child_process_records_what_reading_in_a_thread_records(tmp_path):
    for i in range(5):
        CustomerFactory(external_ref=f"M{i}", enrolled_at=timezone.now() - dt.timedelta(days=9 * i))
    path = broken_file(tmp_path)
    services.integration_for_import()
    runs = {}
    for name, options in {
        "child, two writers": {"writers": 2},
        "thread, two writers": {"writers": 2, "reader_process": False},
        "thread, one writer": {"writers": 1, "reader_process": False},
    }.items():
        Purchase.objects.all().delete()
        Customer.objects.filter(external_ref__startswith="N").delete()
        bad: list = []
        report = run(path, bad=bad, max_line_length=200, **options)
        again_bad: list = []
        again = run(path, bad=again_bad, max_line_length=200, **options)
        runs[name] = (
            (report.rows, report.created, report.unchanged, report.bad, report.customers_created),
            reported(bad),
            recorded(),
            (again.created, again.unchanged, again.customers_created, reported(again_bad)),
        )

    child, thread, one = runs.values()
    assert child == thread == one
    counts, bad, purchases, again = child
    assert counts == (120, 109, 2, 9, 1)  # rows, created, unchanged, bad, customers created
    assert [(line, reason) for line, reason, _fields in bad] == [
        (6, "expected 6 fields, found 7"),
        (
            11,
            "unreadable CSV: field larger than field limit (200); "
            "lines 12–18 read again as rows of their own",
        ),
        (22, "contains a NUL character"),
        (33, "not valid utf-8 text (try --encoding)"),
        (42, "amount is negative: '-3'"),
        (43, f"occurred_at is more than a day in the future: '{day(-9)}'"),
        (52, "line longer than 200 characters"),
        (63, "purchase 'q59' was already recorded with different data"),
        (77, "purchase 'q2' was already recorded with different data"),
    ]
    assert bad[7][2] == ("M2", day(1), "7", "q59", "", "")
    assert again == (0, 111, 0, bad)
    assert len(purchases) == 109


def test_the_file_is_read_by_a_child_process_that_is_gone_afterwards(tmp_path):
    path = mixed_file(tmp_path)
    seen: list = []

    report = run(path, on_progress=lambda report: seen.append(leftovers()), progress_every=100)

    assert report.rows == 400 and len(seen) == 3
    assert all("import-reader" in names for names in seen)
    assert leftovers() == []


def test_a_bad_value_met_by_the_child_is_reported_with_its_line_and_the_rest_goes_in(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(HEADER + "".join(f"A,{day(1)},{'ten' if i == 33 else i + 1},p{i},,\n" for i in range(60)))
    bad: list = []

    report = run(path, bad=bad)

    assert reported(bad) == [(35, "amount is not a number: 'ten'", ("A", day(1), "ten", "p33", "", ""))]
    assert (report.rows, report.created, report.bad) == (60, 59, 1)


def test_a_file_the_child_cannot_import_is_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("customer,amount\nA,10\n")

    with pytest.raises(importing.ImportFileError, match="Missing required column"):
        run(path)

    assert not Purchase.objects.exists() and not Customer.objects.exists()
    assert leftovers() == []


def test_an_error_in_the_child_is_raised_in_the_caller_with_its_type(tmp_path, monkeypatch):
    path = mixed_file(tmp_path)
    parse = importing._PurchaseParser.__call__

    def failing(self, line, fields):
        if line == 100:
            raise LookupError("parser bug")
        return parse(self, line, fields)

    monkeypatch.setattr(importing._PurchaseParser, "__call__", failing)  # the child is a fork: it has it

    with pytest.raises(LookupError, match="parser bug") as raised:
        run(path)

    assert "import's reader process" in "".join(raised.value.__notes__)
    assert Purchase.objects.count() < 400 and leftovers() == []


def test_a_child_that_dies_stops_the_import_and_running_it_again_completes_it(tmp_path, monkeypatch):
    for i in range(7):
        CustomerFactory(external_ref=f"M{i}")
    path = mixed_file(tmp_path)
    whole = run(path)
    everything = recorded()
    Purchase.objects.all().delete()
    Customer.objects.filter(external_ref__startswith="N").delete()
    parse = importing._PurchaseParser.__call__

    def dying(self, line, fields):
        if line == 200:
            os._exit(3)  # as if killed: no word to the parent
        return parse(self, line, fields)

    with monkeypatch.context() as patch:
        patch.setattr(importing._PurchaseParser, "__call__", dying)
        with pytest.raises(importing_process.ReaderDied, match="exit code 3"):
            run(path)

    assert Purchase.objects.count() < len(everything) and leftovers() == []
    again = run(path)
    assert recorded() == everything
    assert again.created + again.unchanged == whole.created + whole.unchanged
    assert again.bad == whole.bad


def test_a_writer_s_error_stops_the_child_too(tmp_path, monkeypatch):
    rows = "".join(f"A,{day(1)},{i + 1},p{i},,\n" for i in range(3000))  # more than the pipe holds
    path = tmp_path / "p.csv"
    path.write_text(HEADER + rows)

    def failing(cursor, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(importing, "_stage_write_history", failing)

    with pytest.raises(RuntimeError, match="disk on fire"):
        run(path)

    assert leftovers() == [] and not Purchase.objects.exists()


@pytest.mark.parametrize(
    "options",
    [{"writers": 2}, {"writers": 2, "reader_process": False}, {"writers": 1, "reader_process": False}],
    ids=["child", "thread", "one writer"],
)
def test_bad_rows_of_every_kind_in_one_chunk_are_reported_in_file_order(tmp_path, options):
    before = tmp_path / "before.csv"
    before.write_text(HEADER + f"A,{day(3)},7,p0,,\n")
    run(before, **options)
    path = tmp_path / "p.csv"
    path.write_text(
        HEADER
        + f"A,{day(1)},10,p1,,\n"
        + f"A,{day(1)},11,p1,,\n"  # p1 again with other data: found staging the chunk
        + f"A,{day(1)},ten,p2,,\n"  # found reading
        + f"A,{day(1)},8,p0,,\n"  # recorded with other data: found writing
        + f"A,{day(1)},\x00,p3,,\n"  # found reading
    )
    bad: list = []

    run(path, bad=bad, chunk_size=100, **options)

    assert [row.line for row in bad] == [3, 4, 5, 6]
