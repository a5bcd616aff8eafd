"""PurchaseLine.category keeps one index. As a CharField with db_index=True it had two on
PostgreSQL: a btree and a second one with varchar_pattern_ops, for LIKE queries, which nothing
makes (segments filter categories with IN); every purchase line written paid for both.

On PostgreSQL the pattern index is dropped and the btree renamed, so that the migration does not
rebuild an index (CREATE INDEX blocks writes to the table while it runs). Elsewhere (the demo's
SQLite) the index is created again under its new name."""

from django.db import migrations, models

OLD = "rewards_purchaseline_category_1a5f18a2"
NEW = "purchaseline_category_idx"


def forward(apps, schema_editor):
    execute = schema_editor.execute
    if schema_editor.connection.vendor == "postgresql":
        execute(f'DROP INDEX IF EXISTS "{OLD}_like"')
        execute(f'ALTER INDEX IF EXISTS "{OLD}" RENAME TO "{NEW}"')
    else:
        execute(f'DROP INDEX IF EXISTS "{OLD}"')
        execute(f'CREATE INDEX "{NEW}" ON "rewards_purchaseline" ("category")')


def backward(apps, schema_editor):
    execute = schema_editor.execute
    if schema_editor.connection.vendor == "postgresql":
        execute(f'ALTER INDEX IF EXISTS "{NEW}" RENAME TO "{OLD}"')
        execute(f'CREATE INDEX "{OLD}_like" ON "rewards_purchaseline" ("category" varchar_pattern_ops)')
    else:
        execute(f'DROP INDEX IF EXISTS "{NEW}"')
        execute(f'CREATE INDEX "{OLD}" ON "rewards_purchaseline" ("category")')


class Migration(migrations.Migration):

    dependencies = [
        ('rewards', '0004_integration_failures_ledger_check'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='purchaseline',
                    name='category',
                    field=models.CharField(blank=True, max_length=64),
                ),
                migrations.AddIndex(
                    model_name='purchaseline',
                    index=models.Index(fields=['category'], name=NEW),
                ),
            ],
            database_operations=[migrations.RunPython(forward, backward)],
        ),
    ]
