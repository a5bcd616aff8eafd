"""The database refuses UPDATE and DELETE of audit entries, as it does for ledger entries
(rewards 0002): raw SQL and other programs are stopped too, not only the admin.

PostgreSQL only. SQLite (the demo) gets no trigger: the demo database is thrown away and
re-seeded, and the admin refuses changes there as well. TRUNCATE fires no row trigger, so a
test database can still be emptied.
"""

from django.db import migrations

PG_UP = """
CREATE OR REPLACE FUNCTION accounts_auditentry_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % refused on accounts_auditentry id=%', TG_OP, OLD.id
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER accounts_auditentry_append_only
    BEFORE UPDATE OR DELETE ON accounts_auditentry
    FOR EACH ROW EXECUTE FUNCTION accounts_auditentry_refuse_change();
"""
PG_DOWN = """
DROP TRIGGER IF EXISTS accounts_auditentry_append_only ON accounts_auditentry;
DROP FUNCTION IF EXISTS accounts_auditentry_refuse_change();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_UP, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_DOWN, params=None)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0005_auditentry")]
    operations = [migrations.RunPython(forwards, backwards)]
