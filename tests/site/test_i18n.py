"""The site speaks English, Danish, Swedish, Russian and Thai."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import polib
import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
TRANSLATED = [code for code, _ in settings.LANGUAGES if code != "en"]

HEADLINE = {
    "en": "Earn points every time you shop",
    "da": "Optjen point, hver gang du handler",
    "sv": "Tjäna poäng varje gång du handlar",
    "ru": "Получайте баллы за каждую покупку",
    "th": "รับคะแนนทุกครั้งที่คุณช้อป",
}


def test_the_five_languages_are_configured():
    assert [code for code, _ in settings.LANGUAGES] == ["en", "da", "sv", "ru", "th"]


@pytest.mark.django_db
@pytest.mark.parametrize("code", list(HEADLINE))
def test_each_language_renders_the_base_page_with_its_own_strings(client, code):
    response = client.get("/", HTTP_ACCEPT_LANGUAGE=code)
    html = response.content.decode()
    assert response.status_code == 200
    assert f'<html lang="{code}">' in html
    assert HEADLINE[code] in html
    for other, headline in HEADLINE.items():
        if other != code:
            assert headline not in html


@pytest.mark.django_db
def test_language_switcher_sets_the_language_for_following_pages(client):
    response = client.post("/i18n/setlang/", {"language": "th", "next": "/"}, follow=True)
    assert HEADLINE["th"] in response.content.decode()


def test_dates_are_formatted_in_the_members_locale(client, program):
    from django.urls import reverse
    from django.utils import timezone
    from django.utils.formats import date_format
    from django.utils.translation import override

    from tests.rewards.test_portal import member_with_login

    member = member_with_login(language="ru")  # the signup bonus: an entry dated today
    client.force_login(member.user)
    today = timezone.localdate()
    with override("ru"):
        expected = date_format(today, "SHORT_DATE_FORMAT")
    assert expected in client.get(reverse("portal-history")).content.decode()
    with override("en"):
        assert date_format(today, "SHORT_DATE_FORMAT") != expected


@pytest.mark.parametrize("code", TRANSLATED)
def test_every_string_of_the_catalogue_is_translated(code):
    catalogue = polib.pofile(str(ROOT / "locale" / code / "LC_MESSAGES" / "django.po"))
    missing = [e.msgid for e in catalogue if not e.obsolete and (not e.translated() or e.fuzzy)]
    assert missing == [], f"{code}: untranslated or fuzzy: {missing[:20]}"


def test_catalogues_hold_every_string_the_code_marks_for_translation(tmp_path):
    """makemessages on a copy of the tree finds nothing the catalogues lack."""
    if shutil.which("xgettext") is None:
        pytest.fail("GNU gettext is needed to check the catalogues: apt-get install gettext")
    copy = tmp_path / "tree"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(".venv", "var", ".git", "node_modules", "*.mo", "__pycache__"),
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "loyalty_site.settings.test"}
    subprocess.run(
        [
            sys.executable,
            "manage.py",
            "makemessages",
            "--all",
            "--no-obsolete",
            "--ignore=tests",
            "--ignore=bench",
            "--ignore=staticfiles",
        ],
        cwd=copy,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    for code in TRANSLATED:
        fresh = polib.pofile(str(copy / "locale" / code / "LC_MESSAGES" / "django.po"))
        kept = polib.pofile(str(ROOT / "locale" / code / "LC_MESSAGES" / "django.po"))
        kept_ids = {(e.msgctxt, e.msgid) for e in kept if not e.obsolete}
        new = sorted(e.msgid for e in fresh if (e.msgctxt, e.msgid) not in kept_ids)
        assert new == [], f"{code}: run `make messages` and translate: {new[:20]}"
