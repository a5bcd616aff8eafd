"""The database itself refuses UPDATE and DELETE of ledger entries.

A trigger, not a Django signal: raw SQL, bulk updates and other programs are
stopped too. TRUNCATE (used only to empty a test database) fires no row trigger.
"""

from django.db import migrations

PG_UP = """
CREATE OR REPLACE FUNCTION rewards_ledgerentry_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are append-only: % refused on rewards_ledgerentry id=%', TG_OP, OLD.id
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER rewards_ledgerentry_append_only
    BEFORE UPDATE OR DELETE ON rewards_ledgerentry
    FOR EACH ROW EXECUTE FUNCTION rewards_ledgerentry_refuse_change();
"""
PG_DOWN = """
DROP TRIGGER IF EXISTS rewards_ledgerentry_append_only ON rewards_ledgerentry;
DROP FUNCTION IF EXISTS rewards_ledgerentry_refuse_change();
"""
SQLITE_UP = [
    """CREATE TRIGGER rewards_ledgerentry_no_update BEFORE UPDATE ON rewards_ledgerentry
       BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only: UPDATE refused'); END;""",
    """CREATE TRIGGER rewards_ledgerentry_no_delete BEFORE DELETE ON rewards_ledgerentry
       BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only: DELETE refused'); END;""",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS rewards_ledgerentry_no_update;",
    "DROP TRIGGER IF EXISTS rewards_ledgerentry_no_delete;",
]


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_UP, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE_UP:
            schema_editor.execute(statement)
    else:
        raise RuntimeError(f"no append-only trigger for database vendor {vendor!r}")


def backwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_DOWN, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE_DOWN:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("rewards", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
