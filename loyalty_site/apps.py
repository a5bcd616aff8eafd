from django.apps import AppConfig


class LoyaltySiteConfig(AppConfig):
    """The wiring app: commands spanning all apps, the beat schedule, health."""

    name = "loyalty_site"
    verbose_name = "Loyalty site"
