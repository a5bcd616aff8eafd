"""History imports written on several connections at once (PostgreSQL, outside a transaction): the
same purchases, customers, counts and bad rows as writing the chunks one after the other."""

import datetime as dt
import multiprocessing
import threading
import time

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import Customer
from rewards import importing, services
from rewards.models import Purchase, PurchaseLine
from tests.factories import CustomerFactory

HEADER = "customer,occurred_at,amount,external_id,currency,category\n"


def day(days_ago: int) -> str:
    return (timezone.localdate() - dt.timedelta(days=days_ago)).isoformat()


def mixed_file(tmp_path):
    """400 rows in chunks of 15: members and shoppers that exist, new customers met again in
    many chunks, rows without id repeated a chunk or several later, ids repeated with other data
    in the next chunk and far away, and rows that are bad to read."""
    rows = []
    for i in range(400):
        ref = f"M{i % 7}" if i % 3 == 0 else f"N{i % 41}"
        external_id = "" if i % 10 == 3 else f"p{i}"
        category = "coffee" if i % 4 else ""
        rows.append(f"{ref},{day(i % 50 + 1)},{i % 90 + 1}.25,{external_id},,{category}\n")
    for i in range(0, 400, 25):
        rows[i + 17] = rows[i]  # the same row again, a chunk later or in the same chunk
    rows[20] = f"M1,{day(2)},999.00,p5,,\n"  # p5 (line 7) with other data, the next chunk
    rows[380] = f"N3,{day(2)},1.00,p34,,coffee\n"  # p34 with other data, far away
    rows[50] = f"M2,{day(2)},ten,p50,,\n"
    rows[200] = f"M2,{day(2)},5,p200,EUR,\n"
    path = tmp_path / "purchases.csv"
    path.write_text(HEADER + "".join(rows))
    return path


def recorded() -> set[tuple]:
    lines = {line.purchase_id: (line.category, line.amount) for line in PurchaseLine.objects.all()}
    return {
        (
            p.external_id,
            p.customer.external_ref,
            p.amount,
            p.occurred_at,
            p.was_member,
            p.request_hash,
            lines.get(p.pk),
        )
        for p in Purchase.objects.select_related("customer")
    }


def run(path, *, writers: int, bad: list | None = None) -> importing.ImportReport:
    return importing.purchases_import(
        path=path, chunk_size=15, writers=writers, on_bad_row=(bad if bad is not None else []).append
    )


def counts(report: importing.ImportReport) -> tuple:
    return report.rows, report.created, report.unchanged, report.bad, report.customers_created


@pytest.fixture
def backends(monkeypatch):
    """The backends (process ids) that wrote purchases."""
    seen: set[int] = set()
    write = importing._stage_write_history

    def spy(cursor, **kwargs):
        seen.add(connection.connection.info.backend_pid)
        return write(cursor, **kwargs)

    monkeypatch.setattr(importing, "_stage_write_history", spy)
    return seen


@pytest.mark.django_db(transaction=True)
def test_two_writers_record_what_one_writer_records_and_again_nothing(tmp_path, backends):
    for i in range(7):
        CustomerFactory(external_ref=f"M{i}", enrolled_at=timezone.now() - dt.timedelta(days=10 * i))
    path = mixed_file(tmp_path)
    services.integration_for_import()

    bad: list = []
    report = run(path, writers=2, bad=bad)
    parallel = recorded()

    assert len(backends) == 2 and connection.connection.info.backend_pid not in backends
    assert [(row.line, row.reason) for row in bad] == [
        (7 + 15, "purchase 'p5' was already recorded with different data"),
        (52, "amount is not a number: 'ten'"),
        (202, "currency 'EUR' is not the program currency DKK"),
        (382, "purchase 'p34' was already recorded with different data"),
    ]
    assert report.created == len(parallel) and report.rows == 400
    assert report.customers_created == 41 == Customer.objects.filter(external_ref__startswith="N").count()

    again_bad: list = []
    again = run(path, writers=2, bad=again_bad)
    assert (again.created, again.unchanged, again.customers_created) == (
        0,
        report.created + report.unchanged,
        0,
    )
    assert [(row.line, row.reason) for row in again_bad] == [(row.line, row.reason) for row in bad]
    assert recorded() == parallel

    Purchase.objects.all().delete()
    Customer.objects.filter(external_ref__startswith="N").delete()
    backends.clear()
    one_bad: list = []
    one = run(path, writers=1, bad=one_bad)

    assert backends == {connection.connection.info.backend_pid}
    assert counts(one) == counts(report)
    assert [(row.line, row.reason) for row in one_bad] == [(row.line, row.reason) for row in bad]
    assert recorded() == parallel


@pytest.mark.django_db(transaction=True)
def test_two_imports_of_the_same_file_at_once_record_each_purchase_once(tmp_path):
    for i in range(7):
        CustomerFactory(external_ref=f"M{i}")
    path = mixed_file(tmp_path)
    services.integration_for_import()
    reports: list = []
    errors: list = []

    def other() -> None:
        try:
            reports.append(run(path, writers=2))
        except Exception as exc:  # noqa: BLE001 - the test fails on it below
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=other)
    thread.start()
    reports.append(run(path, writers=2))
    thread.join()

    assert errors == []
    first, second = reports
    assert first.created + second.created == Purchase.objects.count()
    assert first.customers_created + second.customers_created == 41
    assert first.created + first.unchanged == second.created + second.unchanged
    assert Customer.objects.count() == 7 + 41
    assert run(path, writers=2).created == 0


@pytest.mark.django_db(transaction=True)
def test_an_error_in_a_writer_is_raised_and_the_writers_stop(tmp_path, monkeypatch):
    path = mixed_file(tmp_path)
    write = importing._stage_write_history
    calls = []

    def failing(cursor, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return write(cursor, **kwargs)

    monkeypatch.setattr(importing, "_stage_write_history", failing)

    with pytest.raises(RuntimeError, match="disk on fire"):
        run(path, writers=2)

    assert not [t for t in threading.enumerate() if t.name.startswith("import-writer")]
    assert not multiprocessing.active_children()  # the reader process is gone too
    assert Purchase.objects.count() < 400


@pytest.mark.django_db
def test_a_customer_renamed_during_an_import_is_looked_up_again(tmp_path):
    CustomerFactory(external_ref="K")
    path = tmp_path / "k.csv"
    path.write_text(HEADER + "".join(f"K,{day(1)},{i + 1},k{i},,\n" for i in range(4)))

    def rename(report) -> None:  # after the first chunk, which found K
        if report.rows == 2:
            Customer.objects.filter(external_ref="K").update(external_ref="K-before")

    report = importing.purchases_import(path=path, chunk_size=2, on_progress=rename, progress_every=1)

    assert (report.created, report.customers_created) == (4, 1)
    assert sorted(Purchase.objects.values_list("customer__external_ref", flat=True)) == [
        "K",
        "K",
        "K-before",
        "K-before",
    ]


@pytest.mark.django_db(transaction=True)
def test_a_chunk_with_the_id_of_a_chunk_being_written_waits_for_it_so_the_first_row_wins(
    tmp_path, monkeypatch
):
    CustomerFactory(external_ref="A")  # a customer to create would hold the third row back too
    path = tmp_path / "p.csv"
    path.write_text(HEADER + f"A,{day(2)},10,p1,,\nA,{day(2)},5,p2,,\nA,{day(2)},12,p1,,\n")
    write = importing._stage_write_history

    def slow_first_row(cursor, **kwargs):
        cursor.execute("SELECT 1 FROM import_purchase_stage WHERE external_id = 'p1' AND amount = 10")
        if cursor.fetchone():
            time.sleep(0.5)  # the third row's chunk would be written meanwhile
        return write(cursor, **kwargs)

    monkeypatch.setattr(importing, "_stage_write_history", slow_first_row)
    bad: list = []

    report = importing.purchases_import(path=path, chunk_size=1, writers=2, on_bad_row=bad.append)

    assert [(row.line, row.reason) for row in bad] == [
        (4, "purchase 'p1' was already recorded with different data")
    ]
    assert report.created == 2 and Purchase.objects.get(external_id="p1").amount == 10


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("writers", [1, 2])
def test_chunks_of_new_purchases_then_of_recorded_ones_then_new_again_count_right(tmp_path, writers):
    # New chunks are first inserted without looking their ids up; a chunk with recorded ones fails
    # that way and is written again looking up, as are the chunks after it until one is all new.
    rows = [f"C{i % 4},{day(i % 9 + 1)},{i}.50,q{i},,{'tea' if i % 2 else ''}\n" for i in range(40)]
    (tmp_path / "middle.csv").write_text(HEADER + "".join(rows[10:20]))
    importing.purchases_import(path=tmp_path / "middle.csv", chunk_size=5, writers=writers)
    rows[12] = f"C0,{day(1)},99.00,q12,,\n"
    (tmp_path / "all.csv").write_text(HEADER + "".join(rows))
    bad: list = []

    report = importing.purchases_import(
        path=tmp_path / "all.csv", chunk_size=5, writers=writers, on_bad_row=bad.append
    )

    assert (report.created, report.unchanged, report.customers_created) == (30, 9, 0)
    assert [(row.line, row.reason) for row in bad] == [
        (14, "purchase 'q12' was already recorded with different data")
    ]
    assert Purchase.objects.count() == 40 and PurchaseLine.objects.count() == 20
