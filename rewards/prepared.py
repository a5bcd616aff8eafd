"""Prepared statements for the API's hot path (PostgreSQL with psycopg 3).

Django binds parameters on the client (psycopg's ClientCursor), so PostgreSQL parses and plans
every statement it receives. The member purchase's data-modifying statement is large: planning
it cost more of PostgreSQL's CPU than running it (bench/ceiling.py: ~1.2 ms a purchase
unprepared, ~0.6 ms prepared). The few statements of the hot path go through `prepared_cursor`
instead: server-side binding, prepared once per connection (connections live CONN_MAX_AGE
seconds) and executed by name after that.

Prepared only where asked: the settings turn psycopg's mechanism on with a threshold no
statement reaches by repetition (loyalty_site/settings/base.py `database_settings`), and this
cursor asks explicitly. With DATABASE_PREPARED_STATEMENTS=False (a transaction-mode pooler that
cannot carry prepared statements) the same cursor binds on the server without preparing. On
other databases (the demo's SQLite) it is Django's ordinary cursor.

Statements sent through it must give PostgreSQL every parameter's type where the context does
not (`%(x)s::integer` in a SELECT list): psycopg sends None and strings untyped.
"""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, connections

try:
    import psycopg
except ImportError:  # pragma: no cover - psycopg is in requirements.txt; SQLite needs none
    psycopg = None


if psycopg is not None:

    class _PreparedCursor(psycopg.Cursor):
        """Server-side binding, prepared on first use (Django's cursor wrapper calls execute
        without `prepare`)."""

        def execute(self, query, params=None, *, prepare=None, binary=None):
            return super().execute(query, params, prepare=True if prepare is None else prepare, binary=binary)


class prepared_cursor:  # noqa: N801 - used as a function: `with prepared_cursor() as cursor`
    """A cursor for the hot path's statements, wrapped like Django's own (so query logging and
    `django_assert_max_num_queries` see them) and in the current transaction.

    A class rather than a generator context manager, and the connection looked up once: Django's
    `connection` is a proxy that finds the thread's connection on every attribute, and both
    showed in the purchase's profile."""

    __slots__ = ("raw", "wrapper")

    def __enter__(self):
        db = connections[DEFAULT_DB_ALIAS]
        if db.vendor != "postgresql" or psycopg is None:
            self.raw = None
            self.wrapper = db.cursor()
            return self.wrapper.__enter__()
        db.ensure_connection()
        self.raw = raw = _PreparedCursor(db.connection)
        return db.make_debug_cursor(raw) if db.queries_logged else db.make_cursor(raw)

    def __exit__(self, exc_type, exc, tb):
        if self.raw is None:
            return self.wrapper.__exit__(exc_type, exc, tb)
        self.raw.close()
        return None
