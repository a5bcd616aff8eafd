"""Compile every locale/*/LC_MESSAGES/*.po into its .mo with polib.

Django's own `compilemessages` needs GNU gettext's msgfmt on the machine; this
needs nothing but the Python requirements, so `make demo` works on a bare
machine. Like msgfmt, it leaves out fuzzy and untranslated entries.
"""

from pathlib import Path

import polib
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Compile the .po translation catalogues to .mo files (no gettext needed)."

    def handle(self, *args, **options):
        compiled = 0
        for locale_dir in settings.LOCALE_PATHS:
            for po_path in sorted(Path(locale_dir).glob("*/LC_MESSAGES/*.po")):
                try:
                    catalogue = polib.pofile(str(po_path))
                except (OSError, ValueError) as exc:
                    raise CommandError(f"{po_path}: {exc}") from exc
                catalogue.save_as_mofile(str(po_path.with_suffix(".mo")))
                compiled += 1
        self.stdout.write(f"compiled {compiled} catalogue(s)")
