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

from contextlib import contextmanager

from django.db import connection

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


@contextmanager
def prepared_cursor():
    """A cursor for the hot path's statements, wrapped like Django's own (so query logging and
    `django_assert_max_num_queries` see them) and in the current transaction."""
    if connection.vendor != "postgresql" or psycopg is None:
        with connection.cursor() as cursor:
            yield cursor
        return
    connection.ensure_connection()
    raw = _PreparedCursor(connection.connection)
    cursor = connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw)
    try:
        yield cursor
    finally:
        raw.close()
