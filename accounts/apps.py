from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


def _roles_after_migrate(sender, app_config=None, using="default", **kwargs):
    """After a `flush` (transactional tests empty every table, groups included) the staff
    roles come back; a normal migrate finds them there and changes nothing."""
    from django.apps import apps

    with_models = [config for config in apps.get_app_configs() if config.models_module is not None]
    if app_config is None or app_config is not with_models[-1]:
        # Wait for the last app's signal: every app's permissions exist by then.
        return
    from .roles import roles_ensure

    roles_ensure(missing_groups_only=True)


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = _("Accounts")

    def ready(self):
        post_migrate.connect(_roles_after_migrate, dispatch_uid="accounts.roles_after_migrate")
