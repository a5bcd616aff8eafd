"""The staff roles (Support, Marketing, Analyst, Program admin) as groups with their
permissions, and the custom permissions of the admin's own actions; see accounts/roles.py.

Idempotent: running it again adds nothing. It depends on the latest migration of every app
whose permissions it hands out, so that their models (and permissions) exist.
"""

from django.db import migrations


def forwards(apps, schema_editor):
    from accounts.roles import model_permissions_create, roles_ensure

    model_permissions_create(apps, using=schema_editor.connection.alias)
    roles_ensure(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_auditentry_append_only"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("rewards", "0003_drop_redundant_fk_indexes"),
        ("campaigns", "0006_campaign_survey"),
        ("analytics", "0001_initial"),
        ("otp_totp", "0003_add_timestamps"),
    ]
    # Backwards leaves the groups: they may have members and edits by then.
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
