# Each of these foreign keys leads a composite index already (the primary key (customer, day)
# of the rollup; the unique (run, customer) and the (customer, run) index of the scores), and a
# full analytics run writes millions of rows into every index of these tables. Only the index
# goes: the state change is AlterField(db_index=False), the database change a DROP INDEX (what
# AlterField would run, without dropping and re-validating the foreign-key constraints).

import django.db.models.deletion
from django.db import migrations, models

INDEXES = [
    ("analytics_customerday_customer_id_740ccc8e", "analytics_customerday", "customer_id"),
    ("analytics_customerscore_customer_id_c5e00bb1", "analytics_customerscore", "customer_id"),
    ("analytics_customerscore_run_id_795cb569", "analytics_customerscore", "run_id"),
]


class Migration(migrations.Migration):
    dependencies = [
        ("analytics", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="customerday",
                    name="customer",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="accounts.customer",
                    ),
                ),
                migrations.AlterField(
                    model_name="customerscore",
                    name="customer",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="analytics_scores",
                        to="accounts.customer",
                    ),
                ),
                migrations.AlterField(
                    model_name="customerscore",
                    name="run",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="scores",
                        to="analytics.analyticsrun",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    sql=f'DROP INDEX IF EXISTS "{name}"',
                    reverse_sql=f'CREATE INDEX "{name}" ON "{table}" ("{column}")',
                )
                for name, table, column in INDEXES
            ],
        ),
    ]
