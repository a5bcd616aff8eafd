"""History imports: customers and purchases from CSV files of any size.

Guarantees shared by both imports:

- Streaming: a file is read line by line through the csv module and written in
  chunks of `chunk_size` rows; memory does not grow with the file.
- One bad row never stops the run: a line that cannot be decoded, a line with a NUL
  character, a line longer than `max_line_length` characters, a row with the wrong
  number of fields or an invalid value becomes a `BadRow` (its first line number and
  the reason), handed to `on_bad_row`; the good rows go in. A broken row that ran over
  several lines (a quote never closed) is reported on its first line and the lines
  after it are read again, so that it swallows no good row.
- Idempotent: importing the same file again adds nothing. Each chunk commits on its
  own, so an interrupted run is completed by running it again.
- A file that cannot be imported at all (unknown encoding, a byte order mark of another
  encoding, no header, a required column missing) raises `ImportFileError` before
  anything is written.
"""

from __future__ import annotations

import codecs
import collections
import concurrent.futures
import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import operator
import os
import queue
import re
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, OperationalError, connection, transaction
from django.utils import timezone
from psycopg import errors, postgres, pq
from psycopg._copy_base import format_row_binary  # psycopg's own (C), as Copy.write_row uses it; pinned
from psycopg.adapt import AdaptersMap, PyFormat, Transformer
from psycopg.types.string import BytesBinaryDumper

from accounts.models import Customer, external_ref_is_printable

from . import importing_award, importing_process, services
from .errors import DomainError
from .models import PointsAccount, Purchase, PurchaseLine
from .rules import CENT
from .selectors import tier_lowest

CHUNK_SIZE = 5_000
# Longer lines are reported as bad rows without ever being held in memory whole;
# it is the csv module's field size limit during an import too.
MAX_LINE_LENGTH = 1_048_576
# Clocks of tills drift; anything later than this is a typo in the year.
FUTURE_TOLERANCE = dt.timedelta(days=1)
# Anything earlier is a typo in the year too (the API refuses it as well).
OLDEST_MOMENT = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
# Purchase.amount holds 12 digits, 2 of them decimals.
AMOUNT_LIMIT = Decimal("1E10")
# Customer ref → (id, enrolled_at) remembered across chunks of a history import.
CUSTOMER_CACHE_SIZE = 1_000_000
# Purchases that earn points, awarded together in one transaction (importing_award): the
# accounts of their members stay locked while it runs.
AWARD_BATCH = 1_000
# Purchases that earn points recorded one by one through the service, per transaction (off
# PostgreSQL).
AWARD_BATCH_ONE_BY_ONE = 100
# Connections writing the chunks of a history import at once (PostgreSQL): PostgreSQL's work on
# a chunk takes twice the time this process takes to read and parse it, and a connection's
# backend is one process, so one core.
WRITERS = 2
# Chunks handed to each writer and not yet collected, at most (_ChunkWriters).
PENDING_PER_WRITER = 2
# A referral code is random; a new customer whose code clashes is retried this often.
CREATE_ATTEMPTS = 5

PURCHASE_COLUMNS_REQUIRED = ("customer", "occurred_at", "amount")
PURCHASE_COLUMNS_OPTIONAL = ("external_id", "currency", "category")
CUSTOMER_COLUMNS_REQUIRED = ("external_ref",)
CUSTOMER_COLUMNS_OPTIONAL = (
    "email",
    "first_name",
    "last_name",
    "name",
    "birthday",
    "enrolled_at",
    "language",
    "marketing_consent",
)

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
# Bytes the encoding cannot decode arrive as lone surrogates (errors=_DECODE_ERRORS).
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _undecodable(exc: UnicodeError) -> tuple[str, int]:
    """Like "surrogateescape", which gives up (UnicodeDecodeError) on bytes below 0x80, as a
    broken UTF-16 pair has: every undecodable byte becomes a lone surrogate, so that the
    line is reported as bad instead of the import stopping."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return "".join(chr(0xDC80 | (byte & 0x7F)) for byte in exc.object[exc.start : exc.end]), exc.end


_DECODE_ERRORS = "rewards-import-undecodable"
codecs.register_error(_DECODE_ERRORS, _undecodable)
# What json.dumps (ensure_ascii, as services.request_hash uses it) makes of a string.
_json_string = json.encoder.encode_basestring_ascii


class ImportFileError(DomainError):
    """The file as a whole cannot be imported; nothing was written."""

    code = "import_file_invalid"


class _BadValue(ValueError):
    """A value of a row is invalid; the message is the reason reported for the row."""


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that was not imported: its first line in the file and why."""

    line: int
    reason: str
    fields: tuple[str, ...] = ()


@dataclass
class ImportReport:
    """What an import did. `created`, `updated` and `unchanged` count purchases or customers."""

    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    bad: int = 0
    customers_created: int = 0
    members_created: int = 0
    points_awarded: int = 0
    seconds: float = 0.0
    # Bytes of the file read so far, of `file_size` (0: not a regular file, its size unknown): the
    # progress an import shows. Read ahead of the rows parsed by at most a buffer (8 KB).
    bytes_read: int = 0
    file_size: int = 0
    ignored_columns: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


# --- Reading ------------------------------------------------------------------------


NUL_IN_LINE = "contains a NUL character"


class _Lines:
    """The lines of a text stream, counted, for csv.reader.

    A line longer than `max_length` characters is read in pieces and dropped (csv
    sees an empty line); a line holding bytes the encoding could not decode, or a NUL
    character (which PostgreSQL refuses in text), passes through. All are noted in
    `bad` (line number → reason) for the row that spans them to be reported.

    The lines of a record that runs over several lines are kept (up to 3 × `max_length`
    characters) so that one that turns out broken, typically by a quote that is never
    closed and swallowed the lines after it, can have them read again (`reread_after`).
    """

    def __init__(self, stream: TextIO, *, max_length: int, encoding: str):
        self.stream = stream
        self.max_length = max_length
        self.encoding = encoding
        self.number = 0
        self.bad: dict[int, str] = {}
        self._record_lines = 0  # lines of the record being read, so far
        self._later: list[tuple[int, str, str | None]] = []  # its lines after the first one
        self._later_chars = 0
        self._again: list[tuple[int, str, str | None]] = []  # to read again, last first

    def record_start(self) -> None:
        """A new record begins: forget the lines of the last one."""
        self._record_lines = 0
        if self._later:
            self._later = []
            self._later_chars = 0

    def reread_after(self, number: int) -> bool:
        """Read the lines of this record after its first one (line `number`) again, as new
        records; the caller reads them with a new csv reader. False when there is nothing
        to read again, or the record was too long to keep."""
        if not self._later or self._later_chars > 3 * self.max_length:
            return False
        self._again.extend(reversed(self._later))
        self.number = number
        self.bad.clear()
        self.record_start()
        return True

    def _keep(self, line: str, reason: str | None) -> None:
        # A record that is one field over the csv module's limit (max_length) plus the rest
        # of its first and last lines still fits: that is where csv stops.
        if self._later_chars <= 3 * self.max_length:
            self._later_chars += len(line)
            self._later.append((self.number, line, reason))

    def __iter__(self) -> Iterator[str]:
        readline = self.stream.readline
        limit = self.max_length
        while True:
            if self._again:
                self.number, line, reason = self._again.pop()
                if reason is not None:
                    self.bad[self.number] = reason
            else:
                line = readline(limit)
                if not line:
                    return
                self.number += 1
                reason = None
                if len(line) >= limit and line[-1] not in "\r\n":
                    while line and line[-1] not in "\r\n":
                        line = readline(limit)
                    reason = f"line longer than {limit:,} characters"
                    line = "\n"
                # isascii() is O(1) on CPython: the search runs only on lines with other characters.
                elif not line.isascii() and _UNDECODABLE.search(line):
                    reason = f"not valid {self.encoding} text (try --encoding)"
                elif "\x00" in line:
                    reason = NUL_IN_LINE
                if reason is not None:
                    self.bad[self.number] = reason
            self._record_lines += 1
            if self._record_lines > 1:  # a record over several lines: kept to read again
                self._keep(line, reason)
            yield line


_BOMS = [  # longest first: a UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32", ("utf-32", "utf-32-le")),
    (codecs.BOM_UTF32_BE, "utf-32", ("utf-32", "utf-32-be")),
    (codecs.BOM_UTF8, "utf-8", ("utf-8", "utf-8-sig")),
    (codecs.BOM_UTF16_LE, "utf-16", ("utf-16", "utf-16-le")),
    (codecs.BOM_UTF16_BE, "utf-16", ("utf-16", "utf-16-be")),
]


def _encoding_check(start: bytes, *, codec: str, encoding: str) -> None:
    """A file that begins with a byte order mark says its encoding: refuse another one
    (with it every line would be bad, or the header unreadable) and name the right one."""
    for bom, name, fitting in _BOMS:
        if start.startswith(bom):
            if codec not in fitting:
                raise ImportFileError(
                    f"The file starts with a {name.upper()} byte order mark but is read as {encoding}: "
                    f"import it with --encoding {name}."
                )
            return


@dataclass
class _CsvFile:
    columns: dict[str, int]
    # (line, fields) of each good row, a BadRow for each row that cannot be read.
    rows: Iterator[tuple[int, list[str]] | BadRow]
    # Bytes of the file read so far (a system call: once a chunk, not once a row).
    position: Callable[[], int]


@contextlib.contextmanager
def _csv_open(
    path: str | Path,
    *,
    encoding: str,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    max_line_length: int,
    report: ImportReport,
) -> Iterator[_CsvFile]:
    """Open a CSV file for streaming: check its header, then give its rows one at a time.

    Column names are matched without regard to case or surrounding spaces; a UTF-8
    byte order mark is ignored. Unknown columns are listed in `report.ignored_columns`.
    """
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise ImportFileError(f"Unknown encoding {encoding!r}.") from None
    previous_limit = csv.field_size_limit(max_line_length)
    try:
        with open(path, "rb") as raw:
            _encoding_check(raw.peek(4)[:4], codec=codec, encoding=encoding)
            text = io.TextIOWrapper(raw, encoding=encoding, errors=_DECODE_ERRORS, newline="")
            lines = _Lines(text, max_length=max_line_length, encoding=encoding)
            reader = csv.reader(lines)
            lines.record_start()
            try:
                header = next(reader, None)
            except csv.Error as exc:
                raise ImportFileError(f"The header line cannot be read: {exc}.") from None
            if lines.bad:
                reason = next(iter(lines.bad.values()))
                if reason == NUL_IN_LINE:
                    reason += " (a UTF-16 file? try --encoding utf-16)"
                raise ImportFileError(f"The header line cannot be read: {reason}.")
            if not header:
                raise ImportFileError("The file is empty: a header line naming the columns is needed.")
            names = [name.strip().lower() for name in header]
            names[0] = names[0].lstrip("\ufeff")
            duplicated = sorted({name for name in names if names.count(name) > 1 and name})
            if duplicated:
                raise ImportFileError(f"Columns named more than once: {', '.join(duplicated)}.")
            missing = [name for name in required if name not in names]
            if missing:
                raise ImportFileError(
                    f"Missing required column(s): {', '.join(missing)}. "
                    f"The header has: {', '.join(names) or '(nothing)'}; "
                    f"required: {', '.join(required)}; optional: {', '.join(optional)}."
                )
            report.ignored_columns = [name for name in names if name not in required + optional]
            yield _CsvFile(
                columns={name: index for index, name in enumerate(names)},
                rows=_csv_rows(reader, lines, width=len(names)),
                position=raw.tell,
            )
    finally:
        csv.field_size_limit(previous_limit)


def _reread(start: int, end: int) -> str:
    """Said of a broken record that ran from line `start` to `end`, whose later lines are read again."""
    lines = f"line {end}" if end == start + 1 else f"lines {start + 1}–{end}"
    return f"{lines} read again as rows of their own"


def _csv_rows(reader, lines: _Lines, *, width: int) -> Iterator[tuple[int, list[str]] | BadRow]:
    """(line, fields) of each good row, a BadRow for each other. A broken row that ran over
    several lines (a quote never closed swallows the lines after it) is reported on its
    first line and the lines after that are read again, so the good rows among them go in."""
    end = lines.number
    while True:
        start = end + 1
        lines.record_start()
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if lines.number == end:  # no progress: the reader cannot go on
                raise ImportFileError(f"Line {start}: the file cannot be read further ({exc}).") from None
            end = lines.number
            lines.bad.clear()
            reason = f"unreadable CSV: {exc}"
            if end > start and lines.reread_after(start):
                reason = f"{reason}; {_reread(start, end)}"
                end = start
                reader = csv.reader(lines)
            yield BadRow(start, reason)
            continue
        end = lines.number
        if lines.bad:
            # Every pending bad line belongs to this row: the reader stops at the end of a record.
            reason = lines.bad[min(lines.bad)]
            lines.bad.clear()
            yield BadRow(start, reason, tuple(fields))
            continue
        if not fields:
            continue
        if len(fields) != width and (len(fields) < width or any(fields[width:])):
            reason = f"expected {width} fields, found {len(fields)}"
            if end > start and lines.reread_after(start):
                # Most often a quote never closed, which swallowed the lines after it.
                reason = f'{reason}, over several lines (a quote (") not closed?); {_reread(start, end)}'
                end = start
                # A new reader, over lines that start with those to read again (the old one
                # may have met the end of the file).
                reader = csv.reader(lines)
            yield BadRow(start, reason, tuple(fields))
            continue
        yield start, fields


@dataclass
class _Chunk:
    number: int  # 0, 1, 2, … in file order
    rows: list  # parsed good rows (or what `prepare` made of them: _chunks)
    bad: list[BadRow]
    count: int  # data rows read, good and bad
    keys: set = field(default_factory=set)  # the key of each good row (_chunks' `key`)
    after: int = -1  # the latest chunk before this one with a key in common (-1: none close)
    offset: int = 0  # bytes of the file read when the chunk was complete (_chunks' `position`)


class _Overlaps:
    """For each chunk, the latest of the `lookback` chunks before it that has a key in common with
    it: a writer must have finished that one before it writes this one (_ChunkWriters)."""

    def __init__(self, lookback: int):
        self.recent: collections.deque[tuple[int, set]] = collections.deque(maxlen=max(1, lookback))

    def after(self, number: int, keys: set) -> int:
        latest = -1
        for earlier, earlier_keys in self.recent:
            if not keys.isdisjoint(earlier_keys):
                latest = earlier
        self.recent.append((number, keys))
        return latest


def _chunks(
    rows: Iterator[tuple[int, list[str]] | BadRow],
    parse: Callable[[int, list[str]], object],
    *,
    chunk_size: int,
    key: Callable[[object], object] | None = None,
    lookback: int = 0,
    prepare: Callable[[list, list[BadRow]], object] | None = None,
    position: Callable[[], int] | None = None,
) -> Iterator[_Chunk]:
    """The rows parsed into chunks of `chunk_size` rows read (good and bad). With `key`, each chunk
    knows the latest of the `lookback` chunks before it with a key in common (`after`). `prepare`
    turns a chunk's parsed rows into what its writer takes (and may add bad rows, after those of
    the reading). `position`: the bytes of the file read, asked once a chunk (`offset`)."""
    overlaps = _Overlaps(lookback) if key is not None else None

    def ready(chunk: _Chunk) -> _Chunk:
        if position is not None:
            chunk.offset = position()
        if overlaps is not None:
            chunk.after = overlaps.after(chunk.number, chunk.keys)
            chunk.keys = set()  # kept by `overlaps` as long as needed
        if prepare is not None:
            chunk.rows = prepare(chunk.rows, chunk.bad)
        return chunk

    chunk = _Chunk(0, [], [], 0)
    for item in rows:
        chunk.count += 1
        if isinstance(item, BadRow):
            chunk.bad.append(item)
        else:
            line, fields = item
            try:
                parsed = parse(line, fields)
            except _BadValue as exc:
                chunk.bad.append(BadRow(line, str(exc), tuple(fields)))
            else:
                chunk.rows.append(parsed)
                if overlaps is not None:
                    chunk.keys.add(key(parsed))
        if chunk.count >= chunk_size:
            yield ready(chunk)
            chunk = _Chunk(chunk.number + 1, [], [], 0)
    yield ready(chunk)


class _Stopped(Exception):
    pass


@contextlib.contextmanager
def _parsed_chunks(
    rows: Iterator[tuple[int, list[str]] | BadRow],
    parse: Callable[[int, list[str]], object],
    *,
    chunk_size: int,
    key: Callable[[object], object] | None = None,
    lookback: int = 0,
    prepare: Callable[[list, list[BadRow]], object] | None = None,
    position: Callable[[], int] | None = None,
) -> Iterator[Iterator[_Chunk]]:
    """_chunks made by a background thread.

    Reading and parsing the next chunk then overlaps the database writing the current
    one (psycopg releases the GIL while it waits for the server). The thread touches no
    database: the writes stay on the caller's connection and transaction. An error in
    the thread is raised in the caller; leaving the block early stops the thread.
    """
    ready: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    done = object()

    def put(item) -> None:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    def work() -> None:
        try:
            for chunk in _chunks(
                rows,
                parse,
                chunk_size=chunk_size,
                key=key,
                lookback=lookback,
                prepare=prepare,
                position=position,
            ):
                put(chunk)
            put(done)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
            with contextlib.suppress(_Stopped):
                put(exc)

    def chunks() -> Iterator[_Chunk]:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    worker = threading.Thread(target=work, name="import-parser", daemon=True)
    worker.start()
    try:
        yield chunks()
    finally:
        stop.set()
        worker.join()


# --- Values ---------------------------------------------------------------------------


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


class _UtcOffsets:
    """The UTC offset of a time zone on each local day on which it does not change, so that a
    local time becomes UTC by a subtraction (converting through the zone cost a tenth of an
    import's parsing). Days with a change (checked every quarter of an hour) are converted
    through the zone."""

    _MISSING = object()
    _QUARTERS = [dt.time(hour, minute) for hour in range(24) for minute in (0, 15, 30, 45)]

    def __init__(self, tz: ZoneInfo):
        self.tz = tz
        self.by_day: dict[int, dt.timedelta | None] = {}

    def _offset(self, day: dt.date) -> dt.timedelta | None:
        offsets = {dt.datetime.combine(day, time, self.tz).utcoffset() for time in self._QUARTERS}
        offsets.add(dt.datetime.combine(day, dt.time.max, self.tz).utcoffset())
        return offsets.pop() if len(offsets) == 1 else None

    def day_offset(self, local: dt.datetime) -> dt.timedelta | None:
        """The offset of the zone all day on `local`'s day; None if it changes that day."""
        day = local.toordinal()
        offset = self.by_day.get(day, self._MISSING)
        if offset is self._MISSING:
            if len(self.by_day) >= 10_000:
                self.by_day.clear()
            offset = self.by_day[day] = self._offset(local.date())
        return offset

    def to_utc(self, local: dt.datetime) -> dt.datetime:
        """`local`, without time zone, as a time of the zone (the earlier one when ambiguous), in UTC."""
        offset = self.day_offset(local)
        if offset is None:
            return local.replace(tzinfo=self.tz).astimezone(dt.UTC)
        return (local - offset).replace(tzinfo=dt.UTC)


def _moment_parse(
    text: str, *, what: str, tz: ZoneInfo, latest: dt.datetime, offsets: _UtcOffsets | None = None
) -> dt.datetime:
    """YYYY-MM-DD (midnight) or an ISO 8601 datetime; without an offset, in the program's time zone
    (`tz`, or the zone of `offsets`). Returned in UTC, so that the same moment written two ways
    is the same value."""
    text = text.strip()
    if not text:
        raise _BadValue(f"{what} is missing")
    try:
        moment = dt.datetime.fromisoformat(text)
        if moment.tzinfo is not None:
            moment = moment.astimezone(dt.UTC)
        elif offsets is not None:
            moment = offsets.to_utc(moment)
        else:
            moment = moment.replace(tzinfo=tz).astimezone(dt.UTC)
    except ValueError:
        raise _BadValue(f"{what} is not a date (YYYY-MM-DD) or ISO 8601 datetime: {_short(text)}") from None
    except OverflowError:  # year 1 or 9999 moved across midnight by its offset
        raise _BadValue(f"{what} is out of range: {_short(text)}") from None
    if moment > latest:
        raise _BadValue(f"{what} is more than a day in the future: {_short(text)}")
    if moment < OLDEST_MOMENT:
        raise _BadValue(f"{what} is before 2000-01-01 (a typo in the year?): {_short(text)}")
    return moment


def _amount_parse(text: str) -> Decimal:
    text = text.strip()
    if not text:
        raise _BadValue("amount is missing")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise _BadValue(f"amount is not a number: {_short(text)}") from None
    if not amount.is_finite():
        raise _BadValue(f"amount is not a number: {_short(text)}")
    if amount < 0:
        raise _BadValue(f"amount is negative: {_short(text)}")
    if amount >= AMOUNT_LIMIT:
        raise _BadValue(f"amount is too large (10,000,000,000 or more): {_short(text)}")
    money = amount.quantize(CENT)
    if money != amount:
        raise _BadValue(f"amount has more than 2 decimals: {_short(text)}")
    return money


def _text(fields: list[str], index: int | None, *, what: str, max_length: int) -> str:
    if index is None:
        return ""
    value = fields[index].strip()
    if len(value) > max_length:
        raise _BadValue(f"{what} is longer than {max_length} characters")
    return value


def _customer_ref(fields: list[str], index: int) -> str:
    ref = fields[index].strip()
    if not ref:
        raise _BadValue("customer reference is missing")
    if len(ref) > 64:
        raise _BadValue("customer reference is longer than 64 characters")
    if not external_ref_is_printable(ref):
        raise _BadValue("customer reference holds control characters or only invisible ones")
    return ref


# --- Customers, shared by both imports ---------------------------------------------------


def _customer_new(ref: str, values: dict, *, now: dt.datetime) -> Customer:
    customer = Customer(external_ref=ref, **values)
    if values.get("marketing_consent"):
        customer.marketing_consent_changed_at = now
    return customer


def _customers_create(
    values_by_ref: dict[str, dict], *, now: dt.datetime
) -> dict[str, tuple[int, dt.datetime | None]]:
    """Create these customers with the given values and return ref → (id, enrolled_at).

    A customer created at the same moment by someone else (the API) is returned as
    found, with its own data. A new customer whose random referral code clashes with
    an existing one is skipped by the insert and retried with a new code.
    """
    found: dict[str, tuple[int, dt.datetime | None]] = {}
    pending = dict(values_by_ref)
    for _attempt in range(CREATE_ATTEMPTS):
        if not pending:
            break
        Customer.objects.bulk_create(
            [_customer_new(ref, values, now=now) for ref, values in pending.items()],
            ignore_conflicts=True,
            batch_size=2_000,
        )
        for ref, pk, enrolled_at in Customer.objects.filter(external_ref__in=list(pending)).values_list(
            "external_ref", "pk", "enrolled_at"
        ):
            found[ref] = (pk, enrolled_at)
            del pending[ref]
    if pending:
        raise DomainError(f"Could not create {len(pending)} customer(s), e.g. {next(iter(pending))!r}.")
    return found


class _CustomerCache:
    """Ref → (id, enrolled_at) across chunks, forgotten wholesale when it grows too big."""

    def __init__(self, size: int):
        self.size = size
        self.known: dict[str, tuple[int, dt.datetime | None]] = {}

    def update(self, found: dict[str, tuple[int, dt.datetime | None]]) -> None:
        if len(self.known) + len(found) > self.size:
            self.known.clear()
        self.known.update(found)


def _customers_resolve(
    refs: set[str], *, cache: _CustomerCache | None, report: ImportReport, now: dt.datetime
) -> dict[str, tuple[int, dt.datetime | None]]:
    """Id and enrolment time of each customer in `refs`, creating unknown ones as non-members.

    One query for the refs not in the cache, and only for missing ones an insert and a re-select.
    """
    known = cache.known if cache is not None else {}
    resolved = {ref: known[ref] for ref in refs if ref in known}
    wanted = [ref for ref in refs if ref not in resolved]
    if wanted:
        found = {
            ref: (pk, enrolled_at)
            for ref, pk, enrolled_at in Customer.objects.filter(external_ref__in=wanted).values_list(
                "external_ref", "pk", "enrolled_at"
            )
        }
        missing = {ref: {} for ref in wanted if ref not in found}
        if missing:
            found.update(_customers_create(missing, now=now))
            report.customers_created += len(missing)
        resolved.update(found)
        if cache is not None:
            cache.update(found)
    return resolved


# --- Purchases -------------------------------------------------------------------------


@dataclass(slots=True)
class _PurchaseRow:
    line: int
    fields: list[str]
    customer_ref: str
    external_id: str
    amount: Decimal
    currency: str
    occurred_at: dt.datetime
    category: str
    fingerprint: str

    @property
    def lines(self) -> list[dict] | None:
        return [{"category": self.category, "amount": str(self.amount)}] if self.category else None


def purchase_fingerprint(
    *, customer_ref: str, amount: Decimal, currency: str, occurred_at: dt.datetime, category: str
) -> str:
    """The request hash `services.purchase_record` computes for this purchase (one line with
    the whole amount when there is a category, not enrolling).

    Stored with purchases imported as history, so that the same row sent later through the
    service is recognised as a replay of the same purchase, not as a conflict. It is the
    JSON `services.request_hash` writes, built directly: json.dumps costs more than all the
    rest of a row (tests hold the two equal).
    """
    return _fingerprint(customer_ref, str(amount), currency, occurred_at.isoformat(), category)


def _fingerprint(customer_ref: str, amount: str, currency: str, occurred_at: str, category: str) -> str:
    """purchase_fingerprint of the texts of the amount and of the moment in UTC (isoformat())."""
    quote = _json_string
    amount_json = quote(amount)
    lines = f'[{{"amount": {amount_json}, "category": {quote(category)}}}]' if category else "[]"
    payload = (
        f'{{"amount": {amount_json}, "currency": {quote(currency)}, "customer": {quote(customer_ref)}, '
        f'"enroll": false, "lines": {lines}, "occurred_at": {quote(occurred_at)}}}'
    )
    return hashlib.sha256(payload.encode()).hexdigest()


_HOUR = dt.timedelta(hours=1)


class _PurchaseMoments:
    """A purchase's occurred_at in UTC and its isoformat(), as _moment_parse gives them, faster for
    the two forms files mostly hold (a third of the reading and parsing went to converting and
    formatting moments):

    - a date: converted once per date;
    - a local time to the second (YYYY-MM-DDTHH:MM:SS, or a space for the T) on a day whose UTC
      offset stays the same whole number of hours: the hour in UTC is worked out once per local
      hour, the minutes and seconds are the same, and the moment is read from that UTC text.

    Anything else (an offset in the text, fractions of a second, a day the offset changes or a zone
    half an hour off, a value that is bad or out of range) through _moment_parse."""

    _CACHED = 50_000  # keys of either kind: five years of hours
    _UNSEEN = object()

    def __init__(self, tz: ZoneInfo, *, latest: dt.datetime):
        self.tz = tz
        self.latest = latest
        self.offsets = _UtcOffsets(tz)
        self.dates: dict[str, tuple[dt.datetime, str]] = {}
        self.hours: dict[str, str | None] = {}  # local YYYY-MM-DDTHH → the UTC one; None: no shortcut

    def _slow(self, text: str) -> dt.datetime:
        return _moment_parse(text, what="occurred_at", tz=self.tz, latest=self.latest, offsets=self.offsets)

    def _hour(self, key: str) -> str | None:
        """The UTC YYYY-MM-DDTHH of the local hour `key` (written as in the file), if the day's
        offset is whole hours all day; else None."""
        if len(self.hours) >= self._CACHED:
            self.hours.clear()
        utc = None
        with contextlib.suppress(ValueError, OverflowError):
            local = dt.datetime.fromisoformat(f"{key}:00:00")
            offset = self.offsets.day_offset(local)
            # Only a key written exactly so (digits where they belong) stands for its hour.
            if local.isoformat(sep=key[10])[:13] == key and offset is not None and not offset % _HOUR:
                utc = (local - offset).isoformat()[:13]
        self.hours[key] = utc
        return utc

    def __call__(self, text: str) -> tuple[dt.datetime, str]:
        size = len(text)
        if size == 19 and text[13] == ":" and text[16] == ":":
            key = text[:13]
            hour = self.hours.get(key, self._UNSEEN)
            if hour is self._UNSEEN:
                hour = self._hour(key)
            if hour is not None:
                utc_text = f"{hour}{text[13:]}+00:00"
                try:
                    moment = dt.datetime.fromisoformat(utc_text)
                except ValueError:
                    pass  # reported as _moment_parse reports it
                else:
                    if OLDEST_MOMENT <= moment <= self.latest:
                        return moment, utc_text
        elif size == 10:
            known = self.dates.get(text)
            if known is None:
                if len(self.dates) >= self._CACHED:
                    self.dates.clear()
                moment = self._slow(text)
                known = self.dates[text] = (moment, moment.isoformat())
            return known
        moment = self._slow(text)
        return moment, moment.isoformat()


class _PurchaseParser:
    def __init__(self, columns: dict[str, int], *, now: dt.datetime):
        self.customer = columns["customer"]
        self.occurred_at = columns["occurred_at"]
        self.amount = columns["amount"]
        self.external_id = columns.get("external_id")
        self.currency = columns.get("currency")
        self.category = columns.get("category")
        self.program_currency = settings.PROGRAM_CURRENCY
        self.moments = _PurchaseMoments(ZoneInfo(settings.TIME_ZONE), latest=now + FUTURE_TOLERANCE)

    def __call__(self, line: int, fields: list[str]) -> _PurchaseRow:
        customer_ref = _customer_ref(fields, self.customer)
        occurred_at, occurred_at_text = self.moments(fields[self.occurred_at])
        amount = _amount_parse(fields[self.amount])
        currency = self.program_currency
        if self.currency is not None:
            given = fields[self.currency].strip().upper()
            if given and given != currency:
                raise _BadValue(f"currency {_short(given)} is not the program currency {currency}")
        category = _text(fields, self.category, what="category", max_length=64)
        external_id = _text(fields, self.external_id, what="external_id", max_length=100)
        fingerprint = _fingerprint(customer_ref, str(amount), currency, occurred_at_text, category)
        # Without an id, the row's normalised content is its id: the same row again is the same purchase.
        return _PurchaseRow(
            line,
            fields,
            customer_ref,
            external_id or f"row-{fingerprint}",
            amount,
            currency,
            occurred_at,
            category,
            fingerprint,
        )


# --- Writing purchases on PostgreSQL: a chunk at a time, set-based ------------------------

# A chunk is copied (binary COPY, the fastest way in) to this table of the session, and its
# purchases written from it with their lines in one statement. Its customers not seen by earlier
# chunks are looked up before, the missing ones created.
_STAGE_TABLE = "import_purchase_stage"
_STAGE_CREATE_SQL = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE_TABLE} (
    external_id varchar(100) NOT NULL, customer_ref varchar(64) NOT NULL, amount numeric(12, 2) NOT NULL,
    occurred_at timestamptz NOT NULL, request_hash varchar(64) NOT NULL, category varchar(64) NOT NULL
)
"""
_STAGE_TYPES = ["varchar", "varchar", "numeric", "timestamptz", "varchar", "varchar"]
# LATERAL … LIMIT 1 makes each lookup one probe of a unique index per reference, whatever the
# planner guesses (a hash join would read every customer).
_CUSTOMERS_MISSING_SQL = """
SELECT r.ref FROM unnest(%s::varchar[]) AS r (ref)
LEFT JOIN LATERAL (
    SELECT 1 AS found FROM accounts_customer c WHERE c.external_ref = r.ref LIMIT 1
) c ON true
WHERE c.found IS NULL
"""
# One statement: each staged purchase with its customer and what is recorded under its id; the new
# ones inserted with their lines; how many were there with the same data; the ids there with
# other data. A plain INSERT of the rows found missing costs half an INSERT … ON CONFLICT DO
# NOTHING (no speculative insertion); a twin inserted meanwhile by a concurrent import of the
# same file makes it fail on the unique constraint, and the chunk is written again with
# ON CONFLICT (_STAGE_INSERT_RACING_SQL).
_STAGE_WRITE_SQL = """
WITH probe AS MATERIALIZED (
    SELECT s.external_id, c.id AS customer_id, s.amount, s.occurred_at,
           COALESCE(c.enrolled_at <= s.occurred_at, false) AS was_member, s.request_hash, s.category,
           {recorded} AS recorded
    FROM import_purchase_stage s
    CROSS JOIN LATERAL (
        SELECT c.id, c.enrolled_at FROM accounts_customer c WHERE c.external_ref = s.customer_ref LIMIT 1
    ) c
    {purchase_probe}
), inserted AS (
    INSERT INTO rewards_purchase (integration_id, external_id, customer_id, amount, currency, occurred_at,
        refunded_amount, points_earned, points_clawed_back, was_member, request_hash, balance_after,
        explanation, created_at)
    SELECT %(integration)s, external_id, customer_id, amount, %(currency)s, occurred_at, 0, 0, 0, was_member,
        request_hash, NULL, '[]'::jsonb, %(now)s
    FROM probe WHERE recorded IS NULL
    {on_conflict}
    RETURNING id, external_id
), lines AS (
    INSERT INTO rewards_purchaseline (purchase_id, sku, category, quantity, amount)
    SELECT i.id, '', p.category, 1, p.amount FROM inserted i JOIN probe p USING (external_id)
    WHERE p.category <> ''
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM probe WHERE recorded = request_hash),
       ARRAY(SELECT external_id FROM probe WHERE recorded <> request_hash)
"""
_STAGE_PURCHASE_PROBE = """LEFT JOIN LATERAL (
        SELECT p.request_hash FROM rewards_purchase p
        WHERE p.integration_id = %(integration)s AND p.external_id = s.external_id LIMIT 1
    ) p ON true"""
_STAGE_INSERT_SQL = _STAGE_WRITE_SQL.format(
    recorded="p.request_hash", purchase_probe=_STAGE_PURCHASE_PROBE, on_conflict=""
)
_STAGE_INSERT_RACING_SQL = _STAGE_WRITE_SQL.format(
    recorded="p.request_hash", purchase_probe=_STAGE_PURCHASE_PROBE, on_conflict="ON CONFLICT DO NOTHING"
)
# While a file's purchases have all been new, a chunk is written without looking its ids up first
# (a twelfth of PostgreSQL's time a row): one already there makes the insert fail on the unique
# constraint, and the chunk is written again, looking up (_stage_write_history).
_STAGE_INSERT_NEW_SQL = _STAGE_WRITE_SQL.format(recorded="NULL::varchar", purchase_probe="", on_conflict="")
# After a racing write every staged id is recorded, by this import or another one.
_STAGE_CONFLICTS_SQL = """
SELECT s.external_id FROM import_purchase_stage s
CROSS JOIN LATERAL (
    SELECT p.request_hash FROM rewards_purchase p
    WHERE p.integration_id = %s AND p.external_id = s.external_id LIMIT 1
) p
WHERE p.request_hash <> s.request_hash
"""


_external_id = operator.attrgetter("external_id")
_stage_order = operator.attrgetter("customer_ref", "external_id")


def _stage_load(cursor, rows: list[_PurchaseRow]) -> None:
    cursor.execute(_STAGE_CREATE_SQL)
    cursor.execute(f"TRUNCATE {_STAGE_TABLE}")
    _stage_copy(cursor, _StageEncoder().data(rows))


# A history chunk's transaction begins with one round trip (each one costs a writer thread a wait
# for the GIL): the import's settings, the stage there and empty.
_HISTORY_CHUNK_BEGIN_SQL = (
    f"{importing_award.IMPORT_TRANSACTION_SQL}; {_STAGE_CREATE_SQL.strip()}; TRUNCATE {_STAGE_TABLE}"
)


# The stage's rows as PostgreSQL's binary COPY format takes them (whole: signature, rows, trailer).
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\0" + bytes(8)  # no flags, no header extension
_COPY_TRAILER = b"\xff\xff"


class _StageEncoder:
    """Encodes purchases (distinct external ids) as the stage's binary COPY data, without a
    connection (text in UTF-8).

    Purchases are inserted in the stage's order. By customer: the foreign-key checks and the
    (customer, occurred_at) index then meet each customer's pages once, in order (a tenth less of
    PostgreSQL's time). Then by external id: two imports holding the same purchases wait for each
    other in one direction (the same id with other data can still deadlock; the chunk is then
    written again, _raise_unless_race).

    An amount's binary numeric is made once per amount (psycopg's Decimal dumper cost more than the
    rest of a row) and written as it is: the row is formatted with psycopg's C dumper of bytes in
    its place (not the Python one psycopg registers last for bytea), which writes them unchanged,
    and the server reads them as the stage column's type. The amounts are remembered by their text
    (hashing a new Decimal costs ten times as much)."""

    _AMOUNTS = 100_000

    def __init__(self):
        adapters = AdaptersMap(postgres.adapters)
        adapters.register_dumper(bytes, BytesBinaryDumper)
        self.transformer = Transformer(adapters)
        types = [postgres.types["bytea" if name == "numeric" else name].oid for name in _STAGE_TYPES]
        self.transformer.set_dumper_types(types, pq.Format.BINARY)
        self.numeric = Transformer().get_dumper(Decimal(0), PyFormat.BINARY)
        self.amounts: dict[str, bytes] = {}

    def data(self, rows: list[_PurchaseRow]) -> bytearray:
        amounts, transformer = self.amounts, self.transformer
        if len(amounts) >= self._AMOUNTS:
            amounts.clear()
        data = bytearray(_COPY_SIGNATURE)
        for row in sorted(rows, key=_stage_order):
            text = str(row.amount)
            amount = amounts.get(text)
            if amount is None:
                amount = amounts[text] = bytes(self.numeric.dump(row.amount))
            format_row_binary(
                (row.external_id, row.customer_ref, amount, row.occurred_at, row.fingerprint, row.category),
                transformer,
                data,
            )
        data += _COPY_TRAILER
        return data


def _stage_copy(cursor, data: bytearray) -> None:
    with cursor.copy(f"COPY {_STAGE_TABLE} FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(data)


class _StagedChunk:
    """A chunk of a history import ready for its writer: its purchases deduplicated (the first row
    with an id wins, as one chunk after the other), sorted and encoded for the stage; made where the
    file is read and parsed (_history_stager), so that the writers only send it.

    Pickled (from the reader process, importing_process) the rows are kept only for a conflict's
    bad rows, as a few long strings: pickling a tuple of each row's line, id and fields cost a
    twentieth of the reader's time. The fields of a good row hold no NUL character (_Lines)."""

    __slots__ = ("data", "refs", "size", "unchanged", "_rows")

    def __init__(self, data: bytearray, refs: list[str], size: int, unchanged: int, rows: list | tuple):
        self.data = data  # the stage's binary COPY data
        self.refs = refs  # the distinct customer references
        self.size = size  # distinct purchases
        self.unchanged = unchanged  # repeats of an earlier row of the chunk, with the same data
        self._rows = rows  # the distinct purchases: _PurchaseRow, or packed (_pack)

    def __len__(self) -> int:
        return self.size

    def __reduce__(self):
        rows = self._rows if isinstance(self._rows, tuple) else self._pack(self._rows)
        return (_StagedChunk, (self.data, self.refs, self.size, self.unchanged, rows))

    @staticmethod
    def _pack(rows: list[_PurchaseRow]) -> tuple[str, str, list[int], list[int]]:
        return (
            "\0".join([row.external_id for row in rows]),
            "\0".join(["\0".join(row.fields) for row in rows]),
            [len(row.fields) for row in rows],
            [row.line for row in rows],
        )

    def _unpacked(self) -> Iterator[tuple[str, int, list[str]]]:
        """(external_id, line, fields) of each row."""
        if not isinstance(self._rows, tuple):
            for row in self._rows:
                yield row.external_id, row.line, row.fields
            return
        ids, fields, widths, lines = self._rows
        if not lines:
            return
        fields = fields.split("\0")
        start = 0
        for external_id, width, line in zip(ids.split("\0"), widths, lines, strict=True):
            yield external_id, line, fields[start : start + width]
            start += width

    def conflicts(self, external_ids: list[str]) -> list[BadRow]:
        """The bad rows of these purchases, recorded before with other data, in file order."""
        wrong = set(external_ids)
        return [
            _conflict(line, external_id, fields)
            for external_id, line, fields in self._unpacked()
            if external_id in wrong
        ]


def _history_stager() -> Callable[[list[_PurchaseRow], list[BadRow]], _StagedChunk]:
    """What makes a _StagedChunk of a chunk's parsed purchases and its bad rows so far (a repeat
    of an id with other data is added to them)."""
    encoder = _StageEncoder()

    def stage(rows: list[_PurchaseRow], bad: list[BadRow]) -> _StagedChunk:
        kept, unchanged = _distinct(rows, bad.append)
        refs = list({row.customer_ref for row in kept})
        return _StagedChunk(encoder.data(kept), refs, len(kept), unchanged, kept)

    return stage


# The columns of a customer created by an import, and how each gets its value: a shopper with
# the model's defaults, a fresh referral code, the reference (see _customers_insert).
def _customer_insert_sql() -> tuple[str, list]:
    columns, values, constants = [], [], []
    for model_field in Customer._meta.concrete_fields:
        if model_field.primary_key:
            continue
        columns.append(connection.ops.quote_name(model_field.column))
        if model_field.name == "external_ref":
            values.append("x.ref")
        elif model_field.name == "referral_code":
            values.append("x.code")
        elif model_field.name == "created_at":
            values.append("%(now)s")
        else:
            values.append(f"%(c{len(constants)})s::{model_field.db_type(connection)}")
            constants.append(model_field.get_db_prep_save(model_field.get_default(), connection))
    statement = (
        f"INSERT INTO accounts_customer ({', '.join(columns)}) "  # noqa: S608 - the model's columns
        f"SELECT {', '.join(values)} FROM unnest(%(refs)s::varchar[], %(codes)s::varchar[]) AS x (ref, code) "
        "ON CONFLICT DO NOTHING RETURNING external_ref"
    )
    return statement, constants


def _customers_insert(cursor, refs: list[str], *, now: dt.datetime) -> int:
    """Create these customers as shoppers (not members) with the model's defaults; how many this
    call created. One statement per attempt: a reference created meanwhile by someone else (the
    API) is left as it is, one whose random referral code clashed is tried again with a new code."""
    from accounts.models import referral_code_new

    statement, constants = _customer_insert_sql()
    params = {f"c{i}": value for i, value in enumerate(constants)}
    created = 0
    # In one order everywhere: imports writing on several connections, each waiting for a
    # reference another one is inserting, never wait for each other in a circle.
    pending = sorted(refs)
    for _attempt in range(CREATE_ATTEMPTS):
        if not pending:
            return created
        cursor.execute(
            statement,
            {**params, "now": now, "refs": pending, "codes": [referral_code_new() for _ in pending]},
        )
        done = {ref for (ref,) in cursor.fetchall()}
        created += len(done)
        rest = [ref for ref in pending if ref not in done]
        if rest:
            cursor.execute("SELECT external_ref FROM accounts_customer WHERE external_ref = ANY(%s)", [rest])
            there = {ref for (ref,) in cursor.fetchall()}
            rest = [ref for ref in rest if ref not in there]
        pending = rest
    if pending:
        raise DomainError(f"Could not create {len(pending)} customer(s), e.g. {pending[0]!r}.")
    return created


def _stage_write_history(
    cursor, *, integration_id: int, now: dt.datetime, racing: bool, new: bool = False
) -> tuple[int, int, list[str]]:
    """Record the staged purchases (distinct external ids, their customers all there) as history:
    no points. (created, already there with the same data, external ids there with other data).

    `new`: inserted without looking them up (_STAGE_INSERT_NEW_SQL): IntegrityError if one is there.
    `racing`: with ON CONFLICT DO NOTHING, after the plain insert met a twin that another import
    of the same file wrote since the probe."""
    params = {"integration": integration_id, "currency": settings.PROGRAM_CURRENCY, "now": now}
    if new:
        cursor.execute(_STAGE_INSERT_NEW_SQL, params)
        return cursor.fetchone()[0], 0, []
    if not racing:
        cursor.execute(_STAGE_INSERT_SQL, params)
        created, unchanged, conflicting = cursor.fetchone()
        return created, unchanged, conflicting
    cursor.execute(_STAGE_INSERT_RACING_SQL, params)
    created = cursor.fetchone()[0]
    cursor.execute(_STAGE_CONFLICTS_SQL, [integration_id])
    conflicting = [external_id for (external_id,) in cursor.fetchall()]
    cursor.execute("SELECT count(*) FROM import_purchase_stage")
    return created, cursor.fetchone()[0] - created - len(conflicting), conflicting


class _HistoryMemory:
    """What a history import remembers from chunk to chunk, read and written by its writer threads
    (single operations, atomic in CPython):

    - `refs`: references of customers found in the database by earlier chunks, so that a chunk
      looks up only the others before creating the missing ones; forgotten wholesale when they
      grow too many. A reference that is no longer there (the customer was deleted or renamed
      meanwhile) shows as a staged purchase without customer: the chunk is then written again
      with every reference looked up (_CustomersMoved).
    - `all_new`: whether the last chunk's purchases were all new, so that the next one is first
      inserted without looking its ids up (_STAGE_INSERT_NEW_SQL).
    """

    def __init__(self, size: int, *, writers: int):
        self.size = size
        self.writers = writers
        self.refs: set[str] = set()
        self.all_new = True

    def unknown(self, refs: Collection[str]) -> list[str]:
        known = self.refs
        return sorted(ref for ref in refs if ref not in known)

    def add(self, refs: Collection[str]) -> None:
        if len(self.refs) + len(refs) > self.size:
            self.refs = set()
        self.refs.update(refs)

    def forget(self) -> None:
        self.refs = set()


class _CustomersMoved(Exception):
    """A customer a chunk took as known was not found: the chunk is rolled back."""


def _purchases_chunk_award_postgresql(
    rows: list[_PurchaseRow],
    *,
    integration,
    report: ImportReport,
    bad: Callable[[BadRow], None],
) -> None:
    """With --award-points: the chunk's purchases (distinct external ids) that earn nothing as
    history, those that earn through importing_award."""
    try:
        earning, customers, outcome = _purchases_chunk_history(rows, integration=integration)
    except (IntegrityError, OperationalError) as exc:
        _raise_unless_race(exc)
        # The chunk was rolled back whole; again, taking what the other import left.
        earning, customers, outcome = _purchases_chunk_history(rows, integration=integration, racing=True)
    customers_created, created, unchanged, conflicting = outcome
    report.customers_created += customers_created
    report.created += created
    report.unchanged += unchanged
    if conflicting:
        wrong = set(conflicting)
        for row in rows:
            if row.external_id in wrong:
                bad(_conflict(row.line, row.external_id, row.fields))
    for start in range(0, len(earning), AWARD_BATCH):
        importing_award.purchases_award(
            earning[start : start + AWARD_BATCH],
            customers=customers,
            integration=integration,
            report=report,
            bad=bad,
            one_by_one=_purchases_award,
        )


def _history_staged_write(
    staged: _StagedChunk,
    *,
    integration_id: int,
    memory: _HistoryMemory | None,
    report: ImportReport,
    bad: Callable[[BadRow], None],
) -> None:
    """Record a history chunk (PostgreSQL): its missing customers created, its new purchases
    inserted; a purchase recorded before with other data is a bad row."""
    report.unchanged += staged.unchanged
    customers_created, created, unchanged, conflicting = _history_chunk_write(
        staged, integration_id=integration_id, memory=memory
    )
    report.customers_created += customers_created
    report.created += created
    report.unchanged += unchanged
    if conflicting:
        for row in staged.conflicts(conflicting):
            bad(row)


def _raise_unless_race(exc: Exception) -> None:
    """A unique key taken by another import meanwhile, or a deadlock with one (the same ids in
    another order), is a race: the chunk is written again. Anything else is raised."""
    if isinstance(exc, OperationalError) and not isinstance(exc.__cause__, errors.DeadlockDetected):
        raise exc


def _history_customers_create(cursor, refs: list[str], *, memory: _HistoryMemory | None) -> int:
    """Create the customers of these (distinct) references that are not there (those `memory`
    knows are there are not looked up). How many were created."""
    wanted = memory.unknown(refs) if memory is not None else sorted(refs)
    if not wanted:
        return 0
    cursor.execute(_CUSTOMERS_MISSING_SQL, [wanted])
    missing = [ref for (ref,) in cursor.fetchall()]
    return _customers_insert(cursor, missing, now=timezone.now()) if missing else 0


def _history_customers_create_apart(refs: list[str], *, memory: _HistoryMemory | None) -> int:
    """_history_customers_create in a transaction of its own: a writer whose chunk meets a customer
    another writer is creating waits for this short transaction, not for the other's whole chunk
    (with two writers, almost every chunk met one)."""
    with transaction.atomic(), connection.cursor() as cursor:
        importing_award.import_transaction(cursor)
        return _history_customers_create(cursor, refs, memory=memory)


def _history_chunk_purchases(
    staged: _StagedChunk,
    *,
    integration_id: int,
    create: tuple[list[str], _HistoryMemory | None] | None,
    new: bool = False,
    racing: bool = False,
    check: bool = False,
) -> tuple[int, int, int, list[str]]:
    """Record the chunk's purchases as history in one transaction, after creating their missing
    customers in it (`create`: their references, what is known of them), or with their customers
    there. `check`: raise _CustomersMoved (rolled back) if a purchase found no customer.
    (customers created, purchases created, unchanged, ids recorded with other data)."""
    customers_created = 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_HISTORY_CHUNK_BEGIN_SQL)
        _stage_copy(cursor, staged.data)
        if create is not None:
            customers_created = _history_customers_create(cursor, create[0], memory=create[1])
        outcome = _stage_write_history(
            cursor, integration_id=integration_id, now=timezone.now(), racing=racing, new=new
        )
        created, unchanged, conflicting = outcome
        if check and created + unchanged + len(conflicting) < staged.size:
            raise _CustomersMoved
    return (customers_created, *outcome)


def _history_chunk_write(
    staged: _StagedChunk, *, integration_id: int, memory: _HistoryMemory | None
) -> tuple[int, int, int, list[str]]:
    """Create the chunk's unknown customers, then record its purchases as history. With several
    writers the customers are created (and committed) first, apart. (customers created, purchases
    created, unchanged, ids recorded with other data)."""
    refs = staged.refs
    apart = memory is not None and memory.writers > 1
    customers_created = _history_customers_create_apart(refs, memory=memory) if apart else 0

    def write(*, lookup: _HistoryMemory | None = None, **kwargs) -> tuple[int, int, int, list[str]]:
        created, *outcome = _history_chunk_purchases(
            staged, integration_id=integration_id, create=None if apart else (refs, lookup), **kwargs
        )
        return (customers_created + created, *outcome)

    new = memory is not None and memory.all_new
    try:
        try:
            outcome = write(lookup=memory, new=new, check=memory is not None)
        except _CustomersMoved:
            memory.forget()
            if apart:
                customers_created += _history_customers_create_apart(refs, memory=None)
            outcome = write()
        except IntegrityError:
            if not new:
                raise
            # Some purchases were there already: the chunk was rolled back; again, looking up.
            memory.all_new = False
            outcome = write(lookup=memory)
    except (IntegrityError, OperationalError) as exc:
        _raise_unless_race(exc)
        # The chunk was rolled back whole; again, taking what the other import left.
        outcome = write(racing=True)
    if memory is not None:
        memory.add(refs)  # committed: every one is there
        memory.all_new = outcome[1] == staged.size
    return outcome


def _purchases_chunk_history(
    rows: list[_PurchaseRow], *, integration, racing: bool = False
) -> tuple[list[_PurchaseRow], dict, tuple[int, int, int, list[str]]]:
    """With --award-points: create the chunk's unknown customers and record as history its
    purchases that earn nothing, in one transaction. The purchases that earn, their customers, and
    (customers created, purchases created, unchanged, ids recorded with other data)."""
    now = timezone.now()
    created_customers = 0
    earning: list[_PurchaseRow] = []
    with transaction.atomic(), connection.cursor() as cursor:
        importing_award.import_transaction(cursor)
        customers = importing_award.customers_get(cursor, {row.customer_ref for row in rows})
        missing = [ref for ref in customers if customers[ref] is None]
        if missing:
            created_customers = _customers_insert(cursor, missing, now=now)
            customers.update(importing_award.customers_get(cursor, set(missing)))
        # A member's purchases since enrolling earn (importing_award); the rest is history.
        history = []
        for row in rows:
            (earning if customers[row.customer_ref].member_at(row.occurred_at) else history).append(row)
        outcome = (0, 0, [])
        if history:
            _stage_load(cursor, history)
            outcome = _stage_write_history(cursor, integration_id=integration.pk, now=now, racing=racing)
    return earning, customers, (created_customers, *outcome)


# --- Writing purchases elsewhere (the demo's SQLite): through the ORM, the service ---------


def _purchases_insert(
    rows: list[_PurchaseRow], *, integration_id: int, customers: dict, currency: str
) -> set[str]:
    """Insert these purchases (distinct external ids) unless already there, each with one line
    for the whole amount when it has a category. The external ids of those inserted."""
    if not rows:
        return set()

    def was_member(row: _PurchaseRow) -> bool:
        enrolled_at = customers[row.customer_ref][1]
        return enrolled_at is not None and enrolled_at <= row.occurred_at

    there = set(
        Purchase.objects.filter(
            integration_id=integration_id, external_id__in=[row.external_id for row in rows]
        ).values_list("external_id", flat=True)
    )
    new = [row for row in rows if row.external_id not in there]
    Purchase.objects.bulk_create(
        [
            Purchase(
                integration_id=integration_id,
                external_id=row.external_id,
                customer_id=customers[row.customer_ref][0],
                amount=row.amount,
                currency=currency,
                occurred_at=row.occurred_at,
                was_member=was_member(row),
                request_hash=row.fingerprint,
            )
            for row in new
        ],
        ignore_conflicts=True,
        batch_size=500,
    )
    ids = dict(
        Purchase.objects.filter(
            integration_id=integration_id, external_id__in=[row.external_id for row in new]
        ).values_list("external_id", "pk")
    )
    PurchaseLine.objects.bulk_create(
        [
            PurchaseLine(purchase_id=ids[row.external_id], category=row.category, amount=row.amount)
            for row in new
            if row.category
        ],
        batch_size=500,
    )
    return set(ids)


def _purchases_write_history(
    rows: list[_PurchaseRow],
    *,
    integration_id: int,
    customers: dict,
    report: ImportReport,
    bad: Callable[[BadRow], None],
) -> None:
    """Record these purchases (distinct external ids) as history: no points. A purchase already
    there with the same data counts as unchanged; with other data, its row is bad."""
    inserted = _purchases_insert(
        rows, integration_id=integration_id, customers=customers, currency=settings.PROGRAM_CURRENCY
    )
    report.created += len(inserted)
    others = [row for row in rows if row.external_id not in inserted]
    if not others:
        return
    recorded = dict(
        Purchase.objects.filter(
            integration_id=integration_id, external_id__in=[row.external_id for row in others]
        ).values_list("external_id", "request_hash")
    )
    for row in others:
        if recorded.get(row.external_id) != row.fingerprint:
            bad(_conflict(row.line, row.external_id, row.fields))
        else:
            report.unchanged += 1


def _distinct(rows: list[_PurchaseRow], bad: Callable[[BadRow], None]) -> tuple[list[_PurchaseRow], int]:
    """The chunk's purchases with distinct external ids, and how many repeated an earlier row of the
    chunk with the same data. The first row with an id wins; a repeat with other data is bad."""
    distinct: dict[str, _PurchaseRow] = {}
    repeated = 0
    for row in rows:
        first = distinct.setdefault(row.external_id, row)
        if first is not row:
            if first.fingerprint == row.fingerprint:
                repeated += 1
            else:
                bad(_conflict(row.line, row.external_id, row.fields))
    return list(distinct.values()), repeated


def _conflict(line: int, external_id: str, fields: list[str]) -> BadRow:
    return BadRow(
        line, f"purchase {_short(external_id)} was already recorded with different data", tuple(fields)
    )


def _purchases_award(
    rows: list[_PurchaseRow],
    *,
    integration,
    report: ImportReport,
    bad: Callable[[BadRow], None],
) -> None:
    """Record these members' purchases through the service, one by one, which awards their points
    (idempotent). A few at a time share a transaction: one commit (and disk flush) per purchase
    would cost more than the purchase, and a member's account stays locked only while a batch runs.

    The way off PostgreSQL, and the reference importing_award.purchases_award is held equal to.
    """
    for start in range(0, len(rows), AWARD_BATCH_ONE_BY_ONE):
        with transaction.atomic():
            for row in rows[start : start + AWARD_BATCH_ONE_BY_ONE]:
                try:
                    result = services.purchase_record(
                        integration=integration,
                        external_id=row.external_id,
                        customer_ref=row.customer_ref,
                        amount=row.amount,
                        currency=row.currency,
                        occurred_at=row.occurred_at,
                        lines=row.lines,
                    )
                except DomainError as exc:
                    bad(BadRow(row.line, exc.message, tuple(row.fields)))
                    continue
                if result.created:
                    report.created += 1
                    report.points_awarded += result.points_earned
                else:
                    report.unchanged += 1


def _set_based() -> bool:
    """Chunks are written set-based (PostgreSQL), or through the ORM and the service (elsewhere;
    the tests hold the two equal by running the second on PostgreSQL too)."""
    return connection.vendor == "postgresql"


def _purchases_chunk_write(
    rows: list[_PurchaseRow],
    *,
    integration,
    award_points: bool,
    cache: _CustomerCache | None,
    report: ImportReport,
    bad: Callable[[BadRow], None],
) -> None:
    rows, repeated = _distinct(rows, bad)
    report.unchanged += repeated
    if _set_based():
        if not award_points:
            raise ValueError("History chunks are written staged on PostgreSQL (_history_staged_write).")
        _purchases_chunk_award_postgresql(rows, integration=integration, report=report, bad=bad)
        return
    now = timezone.now()
    with transaction.atomic():
        customers = _customers_resolve(
            {row.customer_ref for row in rows}, cache=cache, report=report, now=now
        )
        earning: list[_PurchaseRow] = []
        history = rows
        if award_points:
            # Only a member's purchases since enrolment earn: they go through the service, one by one.
            # The rest earn nothing and take the fast path, with the result the service would give.
            history = []
            for row in rows:
                enrolled_at = customers[row.customer_ref][1]
                member_then = enrolled_at is not None and enrolled_at <= row.occurred_at
                (earning if member_then else history).append(row)
        _purchases_write_history(
            history, integration_id=integration.pk, customers=customers, report=report, bad=bad
        )
    _purchases_award(earning, integration=integration, report=report, bad=bad)


_bad_row_line = operator.attrgetter("line")
_REPORT_COUNTS = ("created", "updated", "unchanged", "customers_created", "members_created", "points_awarded")


@dataclass
class _Written:
    """A chunk handed to the writer threads."""

    number: int
    future: concurrent.futures.Future
    read_bad: list[BadRow]  # its rows found bad while reading, reported before those of the writing


class _ChunkWriters:
    """Writes chunks with `write(rows, report, bad)`: in the caller's thread (`count` 1), or in
    `count` threads with a database connection each, so that PostgreSQL writes several chunks
    at once (each on a backend, and so a core, of its own) while this process reads and parses.

    In threads, each chunk gets a report and a list of bad rows of its own; they are added to the
    caller's in file order, in the caller's thread, as the chunks complete: the counts and the bad
    rows reported are those of writing the chunks one after the other. So is what is written: a
    chunk sharing a key (a purchase's external id) with a chunk still being written waits
    for it (`after`: _Overlaps, with a lookback of `pending_most`), so that the first row with an
    id wins as it does one chunk after the other. An error in a thread is raised in the caller;
    leaving the block stops the threads, which close their database connections.
    """

    def __init__(
        self,
        write: Callable[[list, ImportReport, Callable[[BadRow], None]], None],
        *,
        count: int,
        report: ImportReport,
        bad: Callable[[BadRow], None],
    ):
        self._write = write
        self.count = count
        self.report = report
        self.bad = bad
        self._jobs: queue.Queue = queue.Queue()
        self._pending: collections.deque[_Written] = collections.deque()
        self._threads: list[threading.Thread] = []

    @staticmethod
    def pending_most(count: int) -> int:
        """Chunks handed to `count` threads and not yet collected, at most: two per thread, so that
        memory stays bounded and the counts close behind. A chunk older than that many before the
        one being handed over has been collected."""
        return PENDING_PER_WRITER * count if count > 1 else 0

    def __enter__(self) -> _ChunkWriters:
        if self.count > 1:
            for number in range(self.count):
                thread = threading.Thread(target=self._work, name=f"import-writer-{number}", daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def __exit__(self, *exc_info) -> None:
        for written in self._pending:
            written.future.cancel()
        for _thread in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                rows, future = job
                if not future.set_running_or_notify_cancel():
                    continue
                report, bad_rows = ImportReport(), []
                try:
                    self._write(rows, report, bad_rows.append)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
                    future.set_exception(exc)
                else:
                    future.set_result((report, bad_rows))
        finally:
            connection.close()

    def _collect(self) -> None:
        written = self._pending.popleft()
        report, bad_rows = written.future.result()
        for name in _REPORT_COUNTS:
            setattr(self.report, name, getattr(self.report, name) + getattr(report, name))
        self._report_bad(written.read_bad, bad_rows)

    def _report_bad(self, read_bad: list[BadRow], written_bad: list[BadRow]) -> None:
        """A chunk's bad rows in file order: those found reading and those found staging or writing
        (a purchase recorded before with other data) interleave."""
        for row in sorted(read_bad + written_bad, key=_bad_row_line):
            self.bad(row)

    def write(self, number: int, rows, read_bad: list[BadRow], after: int) -> None:
        """Write chunk `number`'s good rows, once chunk `after` (and those before it) are written;
        `read_bad`: its bad rows, reported in their place."""
        if not self._threads:
            written_bad: list[BadRow] = []
            if rows:
                self._write(rows, self.report, written_bad.append)
            self._report_bad(read_bad, written_bad)
            return
        while self._pending and (
            len(self._pending) >= self.pending_most(self.count) or self._pending[0].number <= after
        ):
            self._collect()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._pending.append(_Written(number, future, read_bad))
        if rows:
            self._jobs.put((rows, future))
        else:
            future.set_result((ImportReport(), []))

    def finish(self) -> None:
        while self._pending:
            self._collect()


@contextlib.contextmanager
def _file_chunks(
    *,
    path: str | Path,
    encoding: str,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    max_line_length: int,
    chunk_size: int,
    parser: Callable[[dict[str, int]], Callable[[int, list[str]], object]],
    key: Callable[[object], object] | None,
    lookback: int,
    prepare: Callable[[list, list[BadRow]], object] | None,
    in_child: bool,
    report: ImportReport,
) -> Iterator[Iterator[_Chunk]]:
    """The file's _chunks, read and parsed by a thread of this process, or by a child process
    (`in_child`: importing_process; the chunks come pickled, `prepare` should make them small).
    Either way a file that cannot be imported at all raises ImportFileError on entering."""
    options = {"encoding": encoding, "required": required, "optional": optional}
    options["max_line_length"] = max_line_length
    chunking = {"chunk_size": max(1, chunk_size), "key": key, "lookback": lookback, "prepare": prepare}
    if not in_child:
        with (
            _csv_open(path, **options, report=report) as csv_file,
            _parsed_chunks(
                csv_file.rows, parser(csv_file.columns), **chunking, position=csv_file.position
            ) as chunks,
        ):
            yield chunks
        return

    def produce() -> Iterator:
        opened = ImportReport()
        with _csv_open(path, **options, report=opened) as csv_file:
            yield opened.ignored_columns
            yield from _chunks(
                csv_file.rows, parser(csv_file.columns), **chunking, position=csv_file.position
            )

    with importing_process.produced_in_child(produce, name="import-reader") as items:
        report.ignored_columns = next(items)  # the header is good: nothing was written before
        yield items


def _file_size(path: str | Path) -> int:
    """The size of a regular file; 0 for anything else (a pipe), or one that cannot be read (the
    opening says why)."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return 0
    return status.st_size if stat.S_ISREG(status.st_mode) else 0


def _import_run(
    *,
    path: str | Path,
    encoding: str,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    max_line_length: int,
    chunk_size: int,
    parser: Callable[[dict[str, int]], Callable[[int, list[str]], object]],
    write: Callable[[object, ImportReport, Callable[[BadRow], None]], None],
    on_bad_row: Callable[[BadRow], None] | None,
    on_progress: Callable[[ImportReport], None] | None,
    progress_every: int,
    writers: int = 1,
    key: Callable[[object], object] | None = None,
    prepare: Callable[[list, list[BadRow]], object] | None = None,
    in_child: bool = False,
) -> ImportReport:
    """Read, parse (in the background) and write a file a chunk at a time; the report.

    `writers` > 1: chunks are written by that many threads, each on a connection of its own
    (_ChunkWriters); `write` must then be safe to run at once for chunks whose rows have no `key`
    in common. `prepare`: what the reading side makes of a chunk's parsed rows for `write`
    (_chunks); `in_child`: the reading side is a child process (_file_chunks).

    `on_progress(report)` is called after a chunk once `progress_every` rows were read since the
    last call, in the caller's thread; `report.bytes_read` of `report.file_size` says how far.
    """
    started = time.monotonic()
    report = ImportReport(file_size=_file_size(path))

    def bad(row: BadRow) -> None:
        report.bad += 1
        if on_bad_row is not None:
            on_bad_row(row)

    # The reader first: a child process is forked before the writer threads exist.
    with (
        _file_chunks(
            path=path,
            encoding=encoding,
            required=required,
            optional=optional,
            max_line_length=max_line_length,
            chunk_size=chunk_size,
            parser=parser,
            key=key if writers > 1 else None,
            lookback=_ChunkWriters.pending_most(writers),
            prepare=prepare,
            in_child=in_child,
            report=report,
        ) as chunks,
        _ChunkWriters(write, count=writers, report=report, bad=bad) as writing,
    ):
        next_progress = progress_every
        for chunk in chunks:
            report.rows += chunk.count
            report.bytes_read = chunk.offset
            writing.write(chunk.number, chunk.rows, chunk.bad, chunk.after)
            if on_progress is not None and progress_every and report.rows >= next_progress:
                report.seconds = time.monotonic() - started
                on_progress(report)
                next_progress = report.rows + progress_every
        writing.finish()
    report.seconds = time.monotonic() - started
    return report


def purchases_import(
    *,
    path: str | Path,
    encoding: str = "utf-8",
    award_points: bool = False,
    chunk_size: int = CHUNK_SIZE,
    max_line_length: int = MAX_LINE_LENGTH,
    on_bad_row: Callable[[BadRow], None] | None = None,
    on_progress: Callable[[ImportReport], None] | None = None,
    progress_every: int = 100_000,
    writers: int = WRITERS,
    reader_process: bool = True,
) -> ImportReport:
    """Import purchase history from a CSV file (columns customer, occurred_at, amount; optional
    external_id, currency, category) under the integration of `services.integration_for_import`.

    Idempotent on (integration, external_id); a row without external_id gets "row-" and the
    SHA-256 of its normalised content, so the same row again is the same purchase (and two
    identical rows are one purchase). A row whose id was recorded with other data is bad.
    Unknown customers are created as non-members.

    Without `award_points`, purchases are history only: no ledger entries, no points, written
    in bulk a chunk at a time. With it, each purchase a member made since enrolling goes
    through `services.purchase_record` and earns under the rules in force when it was made;
    the others are recorded as history, as the service would record them. A purchase first
    imported as history keeps earning nothing when imported again with `award_points`.

    History only on PostgreSQL, chunks are written by `writers` connections at once, each chunk
    in a transaction of its own, unless the caller holds a transaction (all is written in it);
    with several writers the file is read and parsed by a child process (`reader_process`, where
    processes fork: importing_process), otherwise by a thread.
    """
    integration = services.integration_for_import()
    if award_points or not _set_based() or connection.in_atomic_block:
        writers = 1
    prepare = None
    if _set_based() and not award_points:
        # History on PostgreSQL: the reading side dedupes, sorts and encodes each chunk's stage.
        memory = _HistoryMemory(CUSTOMER_CACHE_SIZE, writers=writers)
        prepare = _history_stager()

        def write(staged: _StagedChunk, report: ImportReport, bad: Callable[[BadRow], None]) -> None:
            _history_staged_write(
                staged, integration_id=integration.pk, memory=memory, report=report, bad=bad
            )

    else:
        # Enrolments change while an award run goes: it looks customers up afresh for each chunk.
        cache = None if award_points else _CustomerCache(CUSTOMER_CACHE_SIZE)

        def write(rows: list[_PurchaseRow], report: ImportReport, bad: Callable[[BadRow], None]) -> None:
            _purchases_chunk_write(
                rows, integration=integration, award_points=award_points, cache=cache, report=report, bad=bad
            )

    return _import_run(
        path=path,
        encoding=encoding,
        required=PURCHASE_COLUMNS_REQUIRED,
        optional=PURCHASE_COLUMNS_OPTIONAL,
        max_line_length=max_line_length,
        chunk_size=chunk_size,
        parser=lambda columns: _PurchaseParser(columns, now=timezone.now()),
        write=write,
        on_bad_row=on_bad_row,
        on_progress=on_progress,
        progress_every=progress_every,
        writers=writers,
        key=_external_id,
        prepare=prepare,
        in_child=writers > 1 and reader_process and importing_process.fork_available(),
    )


# --- Customers ---------------------------------------------------------------------------


class _CustomerParser:
    def __init__(self, columns: dict[str, int], *, now: dt.datetime):
        self.columns = columns
        self.tz = ZoneInfo(settings.TIME_ZONE)
        self.now = now
        self.today = timezone.localdate(now, self.tz)
        self.languages = {code for code, _name in settings.LANGUAGES}

    def _get(self, fields: list[str], name: str) -> str:
        index = self.columns.get(name)
        return fields[index].strip() if index is not None else ""

    def __call__(self, line: int, fields: list[str]) -> tuple[str, dict]:  # noqa: C901 - one branch per column
        """(external_ref, values the row gives): an empty cell gives nothing."""
        ref = _customer_ref(fields, self.columns["external_ref"])
        values: dict = {}
        if email := self._get(fields, "email"):
            try:
                validate_email(email)
            except ValidationError:
                raise _BadValue(f"email is not an email address: {_short(email)}") from None
            values["email"] = email
        first_name, last_name = self._get(fields, "first_name"), self._get(fields, "last_name")
        if not (first_name or last_name) and (name := self._get(fields, "name")):
            first_name, _space, last_name = name.partition(" ")
            last_name = last_name.strip()
        for key, value in (("first_name", first_name), ("last_name", last_name)):
            if len(value) > 150:
                raise _BadValue(f"{key} is longer than 150 characters")
            if value:
                values[key] = value
        if birthday := self._get(fields, "birthday"):
            try:
                day = dt.date.fromisoformat(birthday)
            except ValueError:
                raise _BadValue(f"birthday is not a date (YYYY-MM-DD): {_short(birthday)}") from None
            if day > self.today or day.year < 1900:
                raise _BadValue(f"birthday is not plausible: {_short(birthday)}")
            values["birthday"] = day
        if enrolled_at := self._get(fields, "enrolled_at"):
            values["enrolled_at"] = _moment_parse(
                enrolled_at, what="enrolled_at", tz=self.tz, latest=self.now + FUTURE_TOLERANCE
            )
        if language := self._get(fields, "language").lower():
            if language not in self.languages:
                raise _BadValue(
                    f"language {_short(language)} is not one of {', '.join(sorted(self.languages))}"
                )
            values["language"] = language
        if consent := self._get(fields, "marketing_consent").lower():
            if consent in _TRUE:
                values["marketing_consent"] = True
            elif consent in _FALSE:
                values["marketing_consent"] = False
            else:
                raise _BadValue(f"marketing_consent is not true/false/1/0/yes/no: {_short(consent)}")
        return ref, values


def _customer_apply(customer: Customer, values: dict, *, now: dt.datetime) -> list[str]:
    """Give an existing customer the file's values; the fields that changed.

    An enrolment date is only ever added: a member stays a member, enrolled when they were.
    """
    changed = []
    for key, value in values.items():
        if key == "enrolled_at":
            if customer.enrolled_at is None:
                customer.enrolled_at = value
                changed.append(key)
        elif getattr(customer, key) != value:
            setattr(customer, key, value)
            changed.append(key)
            if key == "marketing_consent":
                customer.marketing_consent_changed_at = now
                changed.append("marketing_consent_changed_at")
    return changed


def _accounts_open(enrolled: dict[int, dt.datetime]) -> int:
    """Open a points account on the lowest tier for each of these members who has none.

    No signup bonus and no ledger entry: the enrolment is history. How many were opened.
    """
    if not enrolled:
        return 0
    have = set(PointsAccount.objects.filter(pk__in=list(enrolled)).values_list("pk", flat=True))
    tier = tier_lowest()
    accounts = [
        PointsAccount(customer_id=pk, tier=tier, tier_changed_at=at)
        for pk, at in enrolled.items()
        if pk not in have
    ]
    PointsAccount.objects.bulk_create(accounts, ignore_conflicts=True, batch_size=2_000)
    return len(accounts)


@transaction.atomic
def _customers_chunk_write(rows: list[tuple[str, dict]], *, report: ImportReport) -> None:
    now = timezone.now()
    merged: dict[str, dict] = {}
    for ref, values in rows:
        merged.setdefault(ref, {}).update(values)
    # Locked in id order, as customer_enroll locks a customer: the enrolment of a customer
    # and the creation of their account cannot interleave with the API's.
    existing = {
        customer.external_ref: customer
        for customer in Customer.objects.select_for_update()
        .filter(external_ref__in=list(merged))
        .order_by("pk")
    }
    changed: list[Customer] = []
    changed_fields: set[str] = set()
    enrolled: dict[int, dt.datetime] = {}
    for ref, customer in existing.items():
        fields = _customer_apply(customer, merged[ref], now=now)
        if fields:
            changed.append(customer)
            changed_fields.update(fields)
        if customer.enrolled_at is not None:
            enrolled[customer.pk] = customer.enrolled_at
    if changed:
        Customer.objects.bulk_update(changed, sorted(changed_fields), batch_size=1_000)
    report.updated += len(changed)
    report.unchanged += len(existing) - len(changed)
    new = {ref: values for ref, values in merged.items() if ref not in existing}
    if new:
        for pk, enrolled_at in _customers_create(new, now=now).values():
            if enrolled_at is not None:
                enrolled[pk] = enrolled_at
        report.created += len(new)
    report.members_created += _accounts_open(enrolled)


def customers_import(
    *,
    path: str | Path,
    encoding: str = "utf-8",
    chunk_size: int = CHUNK_SIZE,
    max_line_length: int = MAX_LINE_LENGTH,
    on_bad_row: Callable[[BadRow], None] | None = None,
    on_progress: Callable[[ImportReport], None] | None = None,
    progress_every: int = 100_000,
) -> ImportReport:
    """Import customers from a CSV file (column external_ref; optional email, first_name,
    last_name or name, birthday, enrolled_at, language, marketing_consent).

    An upsert on external_ref: a new customer is created with the row's values; an
    existing one takes the values the row gives and keeps the rest. Later rows of the
    same customer win. A customer with enrolled_at becomes a member with a points
    account on the lowest tier, without signup bonus or ledger entry; an existing
    enrolment is never moved or removed. Importing the same file again changes nothing.
    """
    return _import_run(
        path=path,
        encoding=encoding,
        required=CUSTOMER_COLUMNS_REQUIRED,
        optional=CUSTOMER_COLUMNS_OPTIONAL,
        max_line_length=max_line_length,
        chunk_size=chunk_size,
        parser=lambda columns: _CustomerParser(columns, now=timezone.now()),
        write=lambda rows, report, bad: _customers_chunk_write(rows, report=report),
        on_bad_row=on_bad_row,
        on_progress=on_progress,
        progress_every=progress_every,
    )


# --- Reporting, for the commands -----------------------------------------------------------


class BadRowLog:
    """Reports bad rows: the first `show` as lines on `stream`, every one to an optional CSV file
    (columns line, reason, row). Use as a context manager."""

    def __init__(self, *, stream, errors_path: str | Path | None = None, show: int = 1_000):
        self.stream = stream
        self.errors_path = errors_path
        self.show = show
        self.count = 0
        self._file = None
        self._writer = None

    def __enter__(self) -> BadRowLog:
        if self.errors_path:
            # backslashreplace: undecodable bytes of a bad row are written as escapes, not refused.
            self._file = open(  # noqa: SIM115 - closed in __exit__
                self.errors_path, "w", encoding="utf-8", errors="backslashreplace", newline=""
            )
            self._writer = csv.writer(self._file)
            self._writer.writerow(["line", "reason", "row"])
        return self

    def __exit__(self, *exc_info) -> None:
        if self._file is not None:
            self._file.close()

    def __call__(self, row: BadRow) -> None:
        self.count += 1
        if self.count <= self.show:
            self.stream.write(f"line {row.line}: {row.reason}")
        elif self.count == self.show + 1:
            where = "; all are in the errors file" if self._writer else ""
            self.stream.write(f"(more bad rows are only counted{where})")
        if self._writer is not None:
            content = io.StringIO()
            csv.writer(content).writerow(row.fields)
            self._writer.writerow([row.line, row.reason, content.getvalue().rstrip("\r\n")[:10_000]])
