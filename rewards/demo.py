"""Demo data for the loyalty core: "Bønne & Brød", a Danish coffee-and-bakery chain.

Program rules, tiers, rewards (with pictures drawn here), the "Shop POS" integration,
a population of customers and months of purchase history. Everything that moves
points goes through `services`, exactly as the API would, so the ledger of the demo
is as right as a real one. The history is drawn from a seeded `random.Random`: the
same seed gives the same shoppers and baskets.

Idempotent: configuration is found by its natural key (tier code, reward name,
category, event type); customers and their history are generated only when no
demo receipt exists yet.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import random
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from accounts.models import Customer, User

from . import services
from .errors import DomainError
from .models import (
    CategoryMultiplier,
    EventRule,
    Integration,
    ProgramRules,
    Promotion,
    Purchase,
    Redemption,
    Reward,
    Tier,
)

BRAND = "Bønne & Brød"
POS_NAME = "Shop POS"
CUSTOMER_PREFIX = "BB-"  # customer numbers BB-000001 …
RECEIPT_PREFIX = "BB-"  # receipts BB-NRB-0000001 …, events BB-EV-000001
DEMO_USERNAME = "customer"  # the portal login accounts.demo makes for Anna Larsen
ANNA_REF = "BB-000001"

# --- The program -----------------------------------------------------------------------

PROGRAM_RULES = {
    "points_per_unit": Decimal("1.00"),
    "minimum_spend": Decimal("10.00"),
    "expiry_months": 24,
    "signup_bonus": 100,
    "birthday_bonus": 250,
    "referral_bonus_referrer": 200,
    "referral_bonus_referee": 100,
}

CATEGORY_MULTIPLIERS = {"coffee-beans": Decimal("2.00"), "pastry": Decimal("1.50")}

TIERS = [
    {
        "code": "bronze",
        "name": "Bronze",
        "min_qualifying_spend": Decimal("0"),
        "multiplier": Decimal("1.00"),
        "name_translations": {"da": "Bronze", "sv": "Brons", "ru": "Бронза", "th": "บรอนซ์"},
    },
    {
        "code": "silver",
        "name": "Silver",
        "min_qualifying_spend": Decimal("3000"),
        "multiplier": Decimal("1.25"),
        "name_translations": {"da": "Sølv", "sv": "Silver", "ru": "Серебро", "th": "เงิน"},
    },
    {
        "code": "gold",
        "name": "Gold",
        "min_qualifying_spend": Decimal("8000"),
        "multiplier": Decimal("1.50"),
        "name_translations": {"da": "Guld", "sv": "Guld", "ru": "Золото", "th": "ทอง"},
    },
]

EVENT_RULES = [
    {
        "event_type": "product_review",
        "name": "Product review",
        "points": 25,
        "cap_count": 3,
        "cap_period": EventRule.CapPeriod.MONTH,
    },
    {
        "event_type": "newsletter_signup",
        "name": "Newsletter signup",
        "points": 50,
        "cap_count": 1,
        "cap_period": EventRule.CapPeriod.YEAR,
    },
]

PROMOTION_NAME = "Double points weekend"


def _tr(da, sv, ru, th) -> dict:
    """Reward translations: (name, description) per language."""
    return {
        code: {"name": name, "description": description}
        for code, (name, description) in {"da": da, "sv": sv, "ru": ru, "th": th}.items()
    }


# name, description, cost, shape, colour, options, translations
REWARDS = [
    (
        "Free filter coffee",
        "A cup of today's filter coffee, any size.",
        500,
        "cup",
        "#6F4E37",
        {"validity_days": 30},
        _tr(
            ("Gratis filterkaffe", "En kop af dagens filterkaffe i valgfri størrelse."),
            ("Gratis bryggkaffe", "En kopp av dagens bryggkaffe, valfri storlek."),
            ("Бесплатный фильтр-кофе", "Чашка фильтр-кофе дня любого размера."),
            ("กาแฟดริปฟรี", "กาแฟดริปประจำวันหนึ่งแก้ว ขนาดใดก็ได้"),
        ),
    ),
    (
        "Free cinnamon swirl",
        "Our kanelsnegl, baked every morning in the shop.",
        550,
        "swirl",
        "#C97B3C",
        {"validity_days": 30},
        _tr(
            ("Gratis kanelsnegl", "Vores kanelsnegl, bagt hver morgen i butikken."),
            ("Gratis kanelbulle", "Vår kanelsnäcka, bakad varje morgon i butiken."),
            ("Бесплатная булочка с корицей", "Наша булочка с корицей, испечённая утром в кафе."),
            ("ขนมปังม้วนอบเชยฟรี", "ขนมปังม้วนอบเชยของเรา อบสดใหม่ทุกเช้าที่ร้าน"),
        ),
    ),
    (
        "Any coffee, any size",
        "Latte, cappuccino, flat white or chai, as large as you like.",
        750,
        "cup",
        "#8C5A3C",
        {"validity_days": 30},
        _tr(
            ("Valgfri kaffe", "Latte, cappuccino, flat white eller chai i den størrelse, du vil."),
            ("Valfritt kaffe", "Latte, cappuccino, flat white eller chai, så stor du vill."),
            ("Любой кофе любого размера", "Латте, капучино, флэт уайт или чай-латте любого размера."),
            ("กาแฟแก้วไหนก็ได้", "ลาเต้ คาปูชิโน่ แฟลตไวท์ หรือชาย ขนาดใดก็ได้"),
        ),
    ),
    (
        "Sourdough loaf",
        "A whole sourdough loaf from our bakery.",
        900,
        "loaf",
        "#B5894F",
        {"validity_days": 30},
        _tr(
            ("Surdejsbrød", "Et helt surdejsbrød fra vores bageri."),
            ("Surdegsbröd", "Ett helt surdegsbröd från vårt bageri."),
            ("Хлеб на закваске", "Целая буханка хлеба на закваске из нашей пекарни."),
            ("ขนมปังซาวร์โดว์", "ขนมปังซาวร์โดว์ทั้งก้อนจากเบเกอรี่ของเรา"),
        ),
    ),
    (
        "Breakfast for one",
        "A coffee and a pastry of your choice.",
        1000,
        "swirl",
        "#D9A441",
        {"validity_days": 30},
        _tr(
            ("Morgenmad til én", "En kaffe og et valgfrit stykke bagværk."),
            ("Frukost för en", "Ett kaffe och valfritt bakverk."),
            ("Завтрак на одного", "Кофе и выпечка на ваш выбор."),
            ("อาหารเช้าสำหรับหนึ่งท่าน", "กาแฟหนึ่งแก้วและขนมอบที่คุณเลือก"),
        ),
    ),
    (
        "Sandwich of the day",
        "Today's sandwich on rye or sourdough.",
        1200,
        "sandwich",
        "#5E8C31",
        {"validity_days": 30},
        _tr(
            ("Dagens sandwich", "Dagens sandwich på rugbrød eller surdej."),
            ("Dagens smörgås", "Dagens smörgås på rågbröd eller surdeg."),
            ("Сэндвич дня", "Сэндвич дня на ржаном хлебе или хлебе на закваске."),
            ("แซนด์วิชประจำวัน", "แซนด์วิชประจำวันบนขนมปังไรย์หรือซาวร์โดว์"),
        ),
    ),
    (
        "House blend, 250 g",
        "Our house blend coffee beans, roasted in Copenhagen.",
        1500,
        "beans",
        "#3E2723",
        {"validity_days": 60},
        _tr(
            ("Husets blanding, 250 g", "Husets kaffebønner, ristet i København."),
            ("Husets blandning, 250 g", "Vårt husets kaffebönor, rostade i Köpenhamn."),
            ("Фирменная смесь, 250 г", "Наш фирменный кофе в зёрнах, обжаренный в Копенгагене."),
            ("เมล็ดกาแฟเบลนด์ประจำร้าน 250 ก.", "เมล็ดกาแฟเบลนด์ประจำร้าน คั่วที่โคเปนเฮเกน"),
        ),
    ),
    (
        "Tote bag",
        f"The {BRAND} canvas tote bag. While stock lasts.",
        2000,
        "tote",
        "#2F6F73",
        {"validity_days": 60, "stock": 50, "per_customer_limit": 1},
        _tr(
            ("Mulepose", f"{BRAND}s mulepose i lærred. Så længe lager haves."),
            ("Tygkasse", f"{BRAND}s tygkasse i canvas. Så länge lagret räcker."),
            ("Сумка-шопер", f"Холщовая сумка {BRAND}. Пока есть в наличии."),
            ("กระเป๋าผ้า", f"กระเป๋าผ้าแคนวาสของ {BRAND} มีจำนวนจำกัด"),
        ),
    ),
    (
        "Layer cake",
        "A layer cake for six, to order two days ahead.",
        4000,
        "cake",
        "#C2185B",
        {"validity_days": 90, "min_tier": "silver"},
        _tr(
            ("Lagkage", "En lagkage til seks personer; bestil to dage før."),
            ("Tårta", "En tårta för sex personer; beställ två dagar i förväg."),
            ("Слоёный торт", "Торт на шесть персон, заказ за два дня."),
            ("เค้กชั้น", "เค้กชั้นสำหรับหกท่าน สั่งล่วงหน้าสองวัน"),
        ),
    ),
    (
        "Barista course for two",
        "Two hours behind the bar with our head barista.",
        6000,
        "star",
        "#B8860B",
        {"validity_days": 180, "min_tier": "gold", "stock": 10},
        _tr(
            ("Baristakursus for to", "To timer bag baren med vores hovedbarista."),
            ("Baristakurs för två", "Två timmar bakom baren med vår chefsbarista."),
            ("Курс бариста для двоих", "Два часа за стойкой с нашим главным бариста."),
            ("คอร์สบาริสต้าสำหรับสองท่าน", "สองชั่วโมงหลังบาร์กับหัวหน้าบาริสต้าของเรา"),
        ),
    ),
]

# --- The shops, their products and how people shop ------------------------------------

STORES = ["NRB", "VES", "FRB", "AAR"]  # Nørrebro, Vesterbro, Frederiksberg, Aarhus C

# Category → (SKU, price in DKK).
PRODUCTS = {
    "coffee": [
        ("CF-ESP", 28),
        ("CF-FIL", 30),
        ("CF-AME", 35),
        ("CF-CAP", 42),
        ("CF-FLW", 44),
        ("CF-LAT", 45),
    ],
    "pastry": [
        ("PA-TEB", 24),
        ("PA-CRO", 25),
        ("PA-SPA", 26),
        ("PA-HIN", 29),
        ("PA-KAN", 32),
        ("PA-KAR", 32),
    ],
    "bread": [("BR-FRA", 40), ("BR-BOL", 42), ("BR-RUG", 48), ("BR-SPE", 52), ("BR-SUR", 58)],
    "sandwich": [("SW-AEG", 69), ("SW-VEG", 72), ("SW-TUN", 74), ("SW-KYL", 79)],
    "coffee-beans": [("CB-HUS", 95), ("CB-ETI", 125), ("CB-ESP", 169), ("CB-COL", 179)],
}

# How a visit looks: (opening hour, closing hour) and what goes in the basket.
STYLES = {
    "commuter": (7, 10),
    "breakfast": (7, 11),
    "lunch": (11, 14),
    "baker": (8, 18),
    "connoisseur": (9, 17),
}
STYLE_WEIGHTS = {"commuter": 25, "breakfast": 25, "lunch": 20, "baker": 20, "connoisseur": 10}

# Who comes, how often, for how long, and who joins: a population like the one the analytics'
# models assume (BG/NBD- and Gamma-Gamma-like), with a known effect of the program, so that
# every dashboard has something true to find (METRICS.md; issue 5, "Demo and validation data").
# - Visits: on each day between arrival and leaving, a visit with probability 1 − e^(−λ), where
#   λ (visits per week ÷ 7) is drawn per shopper from a Gamma: most come now and then, a long
#   tail of regulars comes most mornings.
# - Arrival: some were already coming when the history starts; the others arrive on a day drawn
#   over the history, and part of those never come back (tourists, passers-by).
# - Leaving: after an exponential stay whose mean is drawn per shopper (a Gamma), in continuous
#   time, so that the program's effect does not change how long anyone stays.
# - Spend: the basket of the shopper's style; some often buy for two (a per-shopper share), so
#   each shopper has their own mean spend and visits vary around it (Gamma-Gamma-like).
# - Joining, with self-selection: the chance to join at all grows with λ (heavier buyers join
#   more often); a joiner joins at the first visit on or after a planned day, spread over the
#   history (some joined before it starts).
# - The program's effect: from the day after joining, λ × (1 + PROGRAM_EFFECT). The naive
#   member / non-member gap is far larger (selection); the difference-in-differences finds this.
VISITS_PER_WEEK = (0.6, 0.8)  # Gamma (shape, mean)
KNOWN_BEFORE_SHARE = 0.5  # already customers when the history starts
ONE_TIME_SHARE = 0.3  # of the newcomers: one visit, never back
STAY_MONTHS = (2.0, 24.0)  # Gamma (shape, mean) of the mean stay
BUYS_FOR_TWO = (1.0, 4.0)  # Beta: share of visits with a basket for two
JOIN_CHANCE = (0.2, 0.5, 0.9)  # floor + slope × λ / mean λ, at most the ceiling
JOIN_AT_FIRST_VISIT = 0.3  # of the newcomers who join: at the till on their first visit
JOIN_DELAY_DAYS = 150  # otherwise after an exponential delay of this mean
# A sign-up drive (the baristas asked every regular at the till) in the middle of the history:
# half of the customers of old who join plan to join then. It gives the effect analysis members
# with six months of history before and after joining.
SIGNUP_DRIVE = (0.35, 0.6)  # from, to: shares of the history
SIGNUP_DRIVE_SHARE = 0.5
ONE_TIMER_JOIN_CHANCE = 0.08  # took the signup bonus and never came back
PROGRAM_EFFECT = 0.25  # members visit 25 % more often after joining

# --- Names ---------------------------------------------------------------------------
# (first names female, first names male, last names) per origin; tuples are (native, latin).


def _names(text: str) -> list:
    """ "Ольга/Olga Анна/Anna" → [("Ольга", "Olga"), ("Анна", "Anna")]; plain names stay strings."""
    return [tuple(word.split("/")) if "/" in word else word.replace("_", " ") for word in text.split()]


NAMES = {
    "da": (
        _names("Anne Mette Sofie Ida Freja Emma Camilla Line Maja Signe Louise Karen Astrid"),
        _names("Mads Frederik Lars Søren Jens Rasmus Mikkel Anders Kasper Niels Magnus Jonas"),
        _names(
            "Jensen Nielsen Hansen Pedersen Andersen Christensen Sørensen Rasmussen Jørgensen Madsen "
            "Kristensen Thomsen Møller Holm Kjær Dahl Lund Østergaard"
        ),
    ),
    "sv": (
        _names("Elsa Maja Linnea Saga Ebba Wilma Klara Ingrid"),
        _names("Erik Karl Oskar Axel Gustav Johan Björn Nils"),
        _names("Andersson Johansson Karlsson Nilsson Eriksson Persson Lindqvist Bergström Sjöberg Åberg"),
    ),
    "en": (
        _names("Emily Charlotte Sarah Giulia Ana Chloé Hannah Priya Aisha Marie"),
        _names("James Oliver Daniel Lukas Marco Pablo Tom Ravi Kwame Sean"),
        _names(
            "Smith Müller Rossi García Dubois Novak Kowalski O'Brien Schmidt Fernandes Patel Brown Mensah"
        ),
    ),
    "ru": (
        _names("Ольга/Olga Анна/Anna Мария/Maria Екатерина/Ekaterina Наталья/Natalia"),
        _names("Дмитрий/Dmitry Алексей/Aleksei Сергей/Sergei Иван/Ivan Михаил/Mikhail"),
        # Male surnames; the female form adds -a.
        _names("Иванов/Ivanov Смирнов/Smirnov Кузнецов/Kuznetsov Попов/Popov Соколов/Sokolov Волков/Volkov"),
    ),
    "th": (
        _names("สมศรี/Somsri นภา/Napa วิไล/Wilai ศิริพร/Siriporn พิมพ์/Pim"),
        _names("สมชาย/Somchai ธนพล/Thanaphon อรุณ/Arun ประเสริฐ/Prasert ณัฐ/Nat"),
        _names("สุขสวัสดิ์/Suksawat ศรีสุข/Srisuk วงศ์ใหญ่/Wongyai แก้วมณี/Kaewmanee บุญมา/Boonma ทองดี/Thongdee"),
    ),
}
ORIGIN_WEIGHTS = {"da": 55, "sv": 14, "en": 15, "ru": 8, "th": 8}
EMAIL_DOMAINS = ["example.com", "example.dk", "example.org", "example.net"]


# --- Entry point ---------------------------------------------------------------------


@dataclass
class DemoReport:
    lines: list[str] = field(default_factory=list)
    token: str | None = None

    def add(self, line: str) -> None:
        self.lines.append(line)


def demo_loyalty_ensure(
    *, customers: int = 120, months: int = 6, seed: int = 42, log: Callable[[str], None] | None = None
) -> DemoReport:
    """Create the demo's program, catalogue, integration, customers and history. Safe to run again:
    nothing is duplicated, and the history is only generated when none exists."""
    report = DemoReport()
    program_ensure()
    report.add(
        f"Program rules, {len(TIERS)} tiers, {len(CATEGORY_MULTIPLIERS)} category multipliers, events."
    )
    made = rewards_ensure()
    report.add(f"{Reward.objects.count()} rewards ({made} new).")
    pos, token = pos_integration_ensure()
    report.token = token
    if history_exists():
        report.add("Customers and purchase history already exist: left as they are.")
    else:
        with transaction.atomic():
            summary = population_generate(
                customers=customers, months=months, rng=random.Random(seed), pos=pos, log=log
            )
        report.add(summary)
    anna = demo_customer_link()
    if anna is not None:
        report.add(f'The "{DEMO_USERNAME}" login is {anna.display_name} ({anna.external_ref}).')
    return report


def history_exists() -> bool:
    return Purchase.objects.filter(external_id__startswith=RECEIPT_PREFIX).exists()


# --- Configuration ---------------------------------------------------------------------


def program_ensure() -> None:
    """The demo's rules, multipliers, tiers, event rules and the promotion. What staff have
    changed since is left alone: `make demo` seeds on every start."""
    rules = ProgramRules.current()
    defaults = ProgramRules()
    if all(getattr(rules, key) == getattr(defaults, key) for key in PROGRAM_RULES):
        for key, value in PROGRAM_RULES.items():
            setattr(rules, key, value)
        rules.save()
    for category, multiplier in CATEGORY_MULTIPLIERS.items():
        CategoryMultiplier.objects.get_or_create(category=category, defaults={"multiplier": multiplier})
    for tier in TIERS:
        Tier.objects.get_or_create(code=tier["code"], defaults={k: v for k, v in tier.items() if k != "code"})
    for rule in EVENT_RULES:
        EventRule.objects.get_or_create(
            event_type=rule["event_type"], defaults={k: v for k, v in rule.items() if k != "event_type"}
        )
    if not Promotion.objects.filter(name=PROMOTION_NAME, source="demo").exists():
        starts = _next_saturday(timezone.localdate())
        tz = ZoneInfo(settings.TIME_ZONE)
        Promotion.objects.create(
            name=PROMOTION_NAME,
            multiplier=Decimal("2.00"),
            starts_at=dt.datetime.combine(starts, dt.time.min, tzinfo=tz),
            ends_at=dt.datetime.combine(starts + dt.timedelta(days=2), dt.time.min, tzinfo=tz),
            source="demo",
        )


def _next_saturday(today: dt.date) -> dt.date:
    return today + dt.timedelta(days=(5 - today.weekday()) % 7 or 7)


def rewards_ensure() -> int:
    """The catalogue, each reward with a picture drawn for it. Returns how many were new."""
    tiers = {tier.code: tier for tier in Tier.objects.all()}
    made = 0
    for name, description, cost, shape, colour, options, translations in REWARDS:
        options = dict(options)
        min_tier = tiers.get(options.pop("min_tier", ""))
        reward, created = Reward.objects.get_or_create(
            name=name,
            defaults={
                "description": description,
                "cost_points": cost,
                "translations": translations,
                "min_tier": min_tier,
                **options,
            },
        )
        made += created
        if not reward.image or not reward.image.storage.exists(reward.image.name):
            file_name = f"demo-{_slug(name)}.png"
            storage = reward.image.storage
            stored_name = reward.image.field.generate_filename(reward, file_name)
            if storage.exists(stored_name):
                storage.delete(stored_name)
            reward.image.save(file_name, ContentFile(reward_image_png(name, cost, shape, colour)), save=False)
            Reward.objects.filter(pk=reward.pk).update(image=reward.image.name)
    return made


def pos_integration_ensure() -> tuple[Integration, str | None]:
    """The shops' point of sale. Its token is returned (to print) only when it is made."""
    existing = Integration.objects.filter(name=POS_NAME).first()
    if existing is not None and existing.token_hash:
        return existing, None
    return services.integration_token_create(name=POS_NAME)


def demo_customer_link() -> Customer | None:
    """The portal login "customer" belongs to Anna Larsen."""
    user = User.objects.filter(username=DEMO_USERNAME).first()
    anna = Customer.objects.filter(external_ref=ANNA_REF).first()
    if user is None or anna is None:
        return anna
    if anna.user_id != user.pk and not Customer.objects.filter(user=user).exclude(pk=anna.pk).exists():
        anna.user = user
        anna.save(update_fields=["user"])
    return anna


# --- Pictures ------------------------------------------------------------------------


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in _ascii(text).lower()).split())


def _ascii(text: str) -> str:
    for a, b in (("æ", "ae"), ("ø", "oe"), ("å", "aa"), ("Æ", "Ae"), ("Ø", "Oe"), ("Å", "Aa")):
        text = text.replace(a, b)
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def reward_image_png(name: str, cost: int, shape: str, colour: str) -> bytes:
    """A 600×400 card: the brand, a simple drawing of the reward, its name and price in points."""
    from PIL import Image, ImageDraw

    width, height = 600, 400
    image = Image.new("RGB", (width, height), colour)
    draw = ImageDraw.Draw(image)
    cream, dark = "#FBF3E4", "#2B1D14"
    # A lighter band behind the drawing.
    draw.rounded_rectangle((24, 24, width - 24, height - 24), radius=28, outline=cream, width=4)
    draw.ellipse((width // 2 - 110, 70, width // 2 + 110, 260), fill=_lighter(colour))
    _draw_shape(draw, shape, width // 2, 165, cream, dark)
    font_small, font_name = _font(22), _font(40)
    full = isinstance(getattr(font_name, "path", None), str)  # a file: a system font
    # Pillow's built-in font has no "ø": without a system font the brand is written without it.
    brand = BRAND if full else _ascii(BRAND).replace("oe", "o")
    draw.text((44, 40), brand, fill=cream, font=font_small)
    draw.text((width - 44, 40), f"{cost} pts", fill=cream, font=font_small, anchor="ra")
    draw.text((width // 2, 320), name, fill=cream, font=font_name, anchor="mm")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


SYSTEM_FONTS = ["DejaVuSans.ttf", "NotoSans-Regular.ttf", "LiberationSans-Regular.ttf", "Arial.ttf"]


def _font(size: int):
    """A system font with the Nordic letters if there is one (Pillow looks in the usual font
    folders), else Pillow's built-in font."""
    from PIL import ImageFont

    for name in SYSTEM_FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _lighter(colour: str) -> str:
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{min(255, c + (255 - c) // 3):02x}" for c in rgb)


def _draw_shape(draw, shape: str, cx: int, cy: int, light: str, dark: str) -> None:  # noqa: C901
    if shape == "cup":
        draw.rounded_rectangle((cx - 55, cy - 45, cx + 45, cy + 50), radius=14, fill=light)
        draw.ellipse((cx + 28, cy - 25, cx + 78, cy + 25), outline=light, width=12)
        draw.ellipse((cx - 75, cy + 40, cx + 65, cy + 65), fill=light)
        for dx in (-30, -5, 20):
            draw.arc((cx + dx - 10, cy - 95, cx + dx + 10, cy - 55), 90, 270, fill=light, width=5)
    elif shape == "swirl":
        draw.ellipse((cx - 75, cy - 60, cx + 75, cy + 60), fill=light)
        for r in (50, 34, 18):
            draw.arc((cx - r, cy - r * 0.8, cx + r, cy + r * 0.8), 200, 520, fill=dark, width=6)
    elif shape == "loaf":
        draw.rounded_rectangle((cx - 90, cy - 45, cx + 90, cy + 50), radius=45, fill=light)
        for dx in (-45, 0, 45):
            draw.line((cx + dx - 15, cy - 25, cx + dx + 15, cy + 20), fill=dark, width=6)
    elif shape == "sandwich":
        draw.polygon([(cx - 90, cy + 50), (cx + 90, cy + 50), (cx, cy - 70)], fill=light)
        draw.line((cx - 70, cy + 25, cx + 70, cy + 25), fill="#6BA33E", width=10)
        draw.line((cx - 55, cy + 5, cx + 55, cy + 5), fill="#D9534F", width=8)
    elif shape == "beans":
        draw.polygon(
            [(cx - 60, cy - 70), (cx + 60, cy - 70), (cx + 75, cy + 70), (cx - 75, cy + 70)], fill=light
        )
        for dx, dy in ((-25, -10), (20, 5), (-10, 35), (30, 40)):
            draw.ellipse((cx + dx - 14, cy + dy - 20, cx + dx + 14, cy + dy + 20), fill=dark)
            draw.line((cx + dx, cy + dy - 16, cx + dx, cy + dy + 16), fill=light, width=3)
    elif shape == "tote":
        draw.rectangle((cx - 70, cy - 40, cx + 70, cy + 75), fill=light)
        draw.arc((cx - 45, cy - 95, cx + 45, cy - 5), 180, 360, fill=light, width=10)
        draw.text((cx, cy + 18), "B&B", fill=dark, anchor="mm")
    elif shape == "cake":
        for i, tone in enumerate((light, "#F8BBD0", light)):
            top = cy + 40 - (i + 1) * 32
            draw.rectangle((cx - 85 + i * 10, top, cx + 85 - i * 10, top + 32), fill=tone)
        draw.ellipse((cx - 10, cy - 85, cx + 10, cy - 65), fill="#D32F2F")
    else:  # star
        import math

        points = []
        for i in range(10):
            radius = 85 if i % 2 == 0 else 36
            angle = math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy - radius * math.sin(angle)))
        draw.polygon(points, fill=light)


# --- Customers and their history ---------------------------------------------------------


@dataclass
class Shopper:
    ref: str
    first_name: str
    last_name: str
    email: str
    language: str
    birthday: dt.date | None
    style: str
    visits_per_week: float  # without the program
    store: str
    enrolled_at: dt.datetime | None = None
    # When they first came (None: already a customer when the history starts), when they leave
    # for good, the day they mean to join (None: never), how often they buy for two.
    arrival: dt.datetime | None = None
    leaves: dt.datetime | None = None
    joins_from: dt.datetime | None = None
    buys_for_two: float = 0.0
    # The truth about the program: expected purchase days it added, per calendar month.
    added_days: dict[dt.date, float] = field(default_factory=dict)
    consent: bool = False
    referrer_ref: str | None = None
    # Savers let their points grow; the others redeem when they can afford the reward they want.
    saver: bool = False
    goal: Reward | None = None
    vouchers_to_use: list[Redemption] = field(default_factory=list)
    first_seen: dt.datetime | None = None
    customer: Customer | None = None


def _shopper_new(rng: random.Random, number: int, today: dt.date) -> Shopper:
    origin = rng.choices(list(ORIGIN_WEIGHTS), weights=list(ORIGIN_WEIGHTS.values()))[0]
    female_names, male_names, last_names = NAMES[origin]
    female = rng.random() < 0.55
    first = rng.choice(female_names if female else male_names)
    last = rng.choice(last_names)
    native_script = origin in ("ru", "th") and rng.random() < 0.5
    if isinstance(first, tuple):
        last_native, last_latin = last
        if origin == "ru" and female:
            last_native, last_latin = last_native + "а", last_latin + "a"
        first_latin = first[1]
        first, last = (first[0], last_native) if native_script else (first[1], last_latin)
    else:
        first_latin, last_latin = first, last
    local = rng.choice(
        [
            f"{first_latin}.{last_latin}",
            f"{first_latin}{last_latin}{rng.randint(1, 99)}",
            f"{first_latin[0]}.{last_latin}",
            f"{first_latin}{rng.randint(70, 99)}",
        ]
    )
    email = f"{_ascii(local).lower().replace(' ', '').replace(chr(39), '')}@{rng.choice(EMAIL_DOMAINS)}"
    language = origin if origin == "en" or rng.random() < 0.85 else "en"
    birthday = None
    if rng.random() < 0.88:
        age = int(rng.triangular(18, 78, 34))
        birthday = today.replace(year=today.year - age, month=1, day=1) + dt.timedelta(
            days=rng.randrange(365)
        )
    return Shopper(
        ref=f"{CUSTOMER_PREFIX}{number:06d}",
        first_name=first,
        last_name=last,
        email=email,
        language=language,
        birthday=birthday,
        style=rng.choices(list(STYLE_WEIGHTS), weights=list(STYLE_WEIGHTS.values()))[0],
        visits_per_week=rng.gammavariate(VISITS_PER_WEEK[0], VISITS_PER_WEEK[1] / VISITS_PER_WEEK[0]),
        store=rng.choices(STORES, weights=[35, 30, 25, 10])[0],
        buys_for_two=rng.betavariate(*BUYS_FOR_TWO),
    )


def _life_draw(rng: random.Random, shopper: Shopper, *, start: dt.datetime, end: dt.datetime) -> None:
    """When the shopper arrives and leaves, and whether and when they mean to join (see the
    comment above VISITS_PER_WEEK)."""
    span = end - start
    known_before = rng.random() < KNOWN_BEFORE_SHARE
    # Those still coming when the history starts are more often the ones who stay long (the
    # inspection paradox): their mean stay is drawn size-biased, Gamma(shape + 1, same scale).
    shape, mean = STAY_MONTHS
    mean_stay = rng.gammavariate(shape + known_before, mean / shape)
    stay = dt.timedelta(days=30.44 * rng.expovariate(1 / mean_stay))
    one_time = False
    if known_before:
        # Already coming when the history starts: the stay (memoryless) counts from then.
        shopper.leaves = start + stay
    else:
        shopper.arrival = start + dt.timedelta(days=rng.randrange(max(span.days, 1)))
        one_time = rng.random() < ONE_TIME_SHARE
        shopper.leaves = shopper.arrival + (dt.timedelta(hours=1) if one_time else stay)
    if one_time:
        chance = ONE_TIMER_JOIN_CHANCE
    else:
        floor, slope, ceiling = JOIN_CHANCE
        chance = min(ceiling, floor + slope * shopper.visits_per_week / VISITS_PER_WEEK[1])
    if rng.random() >= chance:
        return
    if shopper.arrival is None:
        # Many during the sign-up drive, the others over the history (some before it starts).
        low, high = SIGNUP_DRIVE if rng.random() < SIGNUP_DRIVE_SHARE else (-0.1, 1.0)
        shopper.joins_from = start + span * rng.uniform(low, high)
    elif one_time or rng.random() < JOIN_AT_FIRST_VISIT:
        shopper.joins_from = shopper.arrival
    else:
        shopper.joins_from = shopper.arrival + dt.timedelta(days=rng.expovariate(1 / JOIN_DELAY_DAYS))


def _anna(now: dt.datetime) -> Shopper:
    """The demo login's member: joined almost two years ago buying coffee beans as Christmas
    presents (those points expire in the coming weeks), a regular since last year, a saver."""
    return Shopper(
        ref=ANNA_REF,
        first_name="Anna",
        last_name="Larsen",
        email="anna.larsen@demo.example",
        language="da",
        birthday=dt.date(1989, 5, 14),
        style="connoisseur",
        visits_per_week=2.2,
        store="NRB",
        enrolled_at=now - dt.timedelta(days=712),
        consent=True,
        saver=True,
    )


def _anna_timeline(rng: random.Random, anna: Shopper, *, history_start, now, tz) -> list[tuple]:
    """Her first ten days (with two bags of gift beans), a year as a regular, and two vouchers lately."""
    items = []
    for day, gift in ((0, True), (2, False), (5, False), (7, True), (10, False)):
        when = anna.enrolled_at + dt.timedelta(days=day, minutes=20)
        lines = _basket(rng, "breakfast")
        if gift:
            sku, price = rng.choice(PRODUCTS["coffee-beans"][1:])
            lines.append(
                {"sku": sku, "category": "coffee-beans", "quantity": "3", "amount": f"{price * 3}.00"}
            )
        items.append((when, 1, "purchase", anna, lines))
    regular_since = min(history_start, now - dt.timedelta(days=330))
    for moment in _visits(rng, anna, regular_since, now - dt.timedelta(minutes=30), tz):
        items.append((moment, 1, "purchase", anna, _basket(rng, rng.choice(["connoisseur", "breakfast"]))))
    # One voucher used at the till three days ago; one waiting in the portal.
    items.append((now - dt.timedelta(days=3, hours=2), 2, "redeem", anna, ("Free filter coffee", True)))
    items.append((now - dt.timedelta(hours=20), 2, "redeem", anna, ("Free cinnamon swirl", False)))
    return items


def _basket(rng: random.Random, style: str) -> list[dict]:
    items: list[tuple[str, str, int]] = []  # category, sku, price

    def take(category: str, chance: float = 1.0, count: int = 1) -> None:
        if rng.random() < chance:
            for _ in range(count):
                items.append((category, *rng.choice(PRODUCTS[category])))

    if style == "commuter":
        take("coffee", count=rng.choice([1, 1, 1, 2]))
        take("pastry", 0.2)
    elif style == "breakfast":
        take("coffee", count=rng.choice([1, 1, 2]))
        take("pastry", count=rng.choice([1, 1, 2]))
    elif style == "lunch":
        take("sandwich", count=rng.choice([1, 1, 1, 2]))
        take("coffee", 0.6)
        take("pastry", 0.2)
    elif style == "baker":
        take("bread", count=rng.choice([1, 1, 2]))
        take("pastry", 0.7, count=rng.choice([1, 2, 4, 6]))
        take("coffee", 0.3)
    else:  # connoisseur
        take("coffee", count=rng.choice([1, 1, 2]))
        take("coffee-beans", 0.3)
        take("pastry", 0.35)
    lines: dict[str, dict] = {}
    for category, sku, price in items:
        line = lines.setdefault(sku, {"sku": sku, "category": category, "quantity": 0, "price": price})
        line["quantity"] += 1
    return [
        {
            "sku": line["sku"],
            "category": line["category"],
            "quantity": str(line["quantity"]),
            "amount": f"{line['price'] * line['quantity']}.00",
        }
        for line in lines.values()
    ]


def _doubled(line: dict) -> dict:
    """The same line for two: twice the quantity and the amount."""
    return {
        **line,
        "quantity": str(2 * int(line["quantity"])),
        "amount": f"{2 * Decimal(line['amount']):.2f}",
    }


def _visits(
    rng: random.Random,
    shopper: Shopper,
    start: dt.datetime,
    end: dt.datetime,
    tz: ZoneInfo,
    *,
    first: dt.date | None = None,
) -> list[dt.datetime]:
    """Visit times between start and end, at most one a day: each day a visit with probability
    1 − e^(−λ), λ by weekday and season; on the day `first` (a newcomer's first visit) one
    whatever the odds. A shopper who means to join joins at their first visit on or after that
    day (`enrolled_at` is set a minute before it); from the next day on they come
    PROGRAM_EFFECT more often: the program's effect the analytics should find."""
    import math

    shopper.added_days = {}
    times = []
    day = timezone.localtime(start, tz).date()
    last_day = timezone.localtime(end, tz).date()
    opening, closing = STYLES[shopper.style]
    while day <= last_day:
        rate = shopper.visits_per_week / 7
        weekend = day.weekday() >= 5
        if shopper.style == "commuter" and weekend:
            rate *= 0.3
        elif shopper.style == "baker" and weekend:
            rate *= 1.6
        if day.month == 12:
            rate *= 1.2
        if shopper.enrolled_at is not None and timezone.localtime(shopper.enrolled_at, tz).date() < day:
            month = day.replace(day=1)
            added = math.exp(-rate) - math.exp(-rate * (1 + PROGRAM_EFFECT))
            shopper.added_days[month] = shopper.added_days.get(month, 0.0) + added
            rate *= 1 + PROGRAM_EFFECT
        if rng.random() < 1 - math.exp(-rate) or day == first:
            moment = dt.datetime.combine(
                day, dt.time(rng.randrange(opening, closing), rng.randrange(60)), tzinfo=tz
            )
            moment += dt.timedelta(seconds=rng.randrange(60))
            if start <= moment < end:
                if (
                    shopper.enrolled_at is None
                    and shopper.joins_from is not None
                    and moment >= shopper.joins_from
                ):
                    shopper.enrolled_at = moment - dt.timedelta(minutes=1)
                times.append(moment)
        day += dt.timedelta(days=1)
    return times


def population_generate(
    *,
    customers: int,
    months: int,
    rng: random.Random,
    pos: Integration,
    log: Callable[[str], None] | None = None,
) -> str:
    """Customers, enrolments, referrals, purchases and redemptions in time order; then refunds,
    events, birthday bonuses and the nightly jobs of today."""
    log = log or (lambda message: None)
    tz = ZoneInfo(settings.TIME_ZONE)
    now = timezone.now()
    today = timezone.localdate()
    # From a midnight, so that a newcomer's arrival day starts at one too.
    history_start = dt.datetime.combine(
        today - dt.timedelta(days=round(months * 30.44)), dt.time.min, tzinfo=tz
    )
    end = now - dt.timedelta(minutes=30)
    rewards = list(Reward.objects.filter(is_active=True).order_by("cost_points"))

    count = max(customers, 1)
    shoppers = [_anna(now)] + [_shopper_new(rng, number, today) for number in range(2, count + 1)]
    # (when, order, kind, shopper, payload): at the same moment, enrolment before purchase before redemption.
    timeline: list[tuple] = []
    for shopper in shoppers[1:]:
        _life_draw(rng, shopper, start=history_start, end=end)
        if shopper.joins_from is not None and shopper.joins_from < history_start:
            shopper.enrolled_at = shopper.joins_from + dt.timedelta(hours=rng.uniform(8, 17))
        start = history_start if shopper.arrival is None else shopper.arrival
        stop = min(
            end, dt.datetime.combine(timezone.localtime(shopper.leaves, tz).date(), dt.time.max, tzinfo=tz)
        )
        first = None if shopper.arrival is None else timezone.localtime(shopper.arrival, tz).date()
        visits = _visits(rng, shopper, start, stop, tz, first=first)
        if not visits:
            # Everyone on the list bought at least once: a quiet regular of old comes once.
            first = timezone.localtime(start + (stop - start) * rng.random(), tz).date()
            visits = _visits(rng, shopper, start, stop, tz, first=first)
        for moment in visits:
            style = shopper.style if rng.random() < 0.75 else rng.choice(list(STYLES))
            basket = _basket(rng, style)
            if rng.random() < shopper.buys_for_two:
                basket = [_doubled(line) for line in basket]
            timeline.append((moment, 1, "purchase", shopper, basket))
        if shopper.enrolled_at is not None:
            shopper.consent = rng.random() < 0.65
            shopper.saver = rng.random() < 0.25
            shopper.goal = _goal_pick(rng, rewards)
    members = sorted((s for s in shoppers if s.enrolled_at), key=lambda s: s.enrolled_at)
    # A few of the members who joined lately came with a friend's "bring a friend" code. Lately,
    # because the referral bonus is credited when the service runs, not at the purchase's time:
    # kept recent, the bonus stands in the ledger near the purchases that surround it.
    # Not Anna: her ledger, the one the demo shows, stays in time order.
    recent = [s for s in members if s.ref != ANNA_REF and s.enrolled_at >= now - dt.timedelta(days=21)]
    referred = rng.sample(recent, k=min(len(recent), max(1, count // 15)))
    for shopper in referred:
        earlier = [s for s in members if s.enrolled_at < shopper.enrolled_at and s not in referred]
        earlier = [s for s in earlier if s.ref != ANNA_REF]
        if earlier:
            shopper.referrer_ref = rng.choice(earlier).ref

    for shopper in shoppers:
        if shopper.enrolled_at:
            timeline.append((shopper.enrolled_at, 0, "enroll", shopper, None))
        if shopper.ref == ANNA_REF:
            timeline += _anna_timeline(rng, shopper, history_start=history_start, now=now, tz=tz)
    timeline.sort(key=lambda item: (item[0], item[1], item[3].ref))

    for when, _order, _kind, shopper, _payload in timeline:
        shopper.first_seen = shopper.first_seen or when
    by_ref = {shopper.ref: shopper for shopper in shoppers}
    for shopper in shoppers:
        shopper.customer, _created = Customer.objects.get_or_create(
            external_ref=shopper.ref,
            defaults={
                "first_name": shopper.first_name,
                "last_name": shopper.last_name,
                "email": shopper.email,
                "birthday": shopper.birthday,
                "language": shopper.language,
                "marketing_consent": shopper.consent,
                "marketing_consent_changed_at": shopper.enrolled_at if shopper.consent else None,
            },
        )
    log(f"{len(shoppers)} customers; recording {sum(1 for t in timeline if t[2] == 'purchase')} purchases …")

    receipts: list[tuple[str, Shopper, dt.datetime, list[dict]]] = []
    redemptions: list[Redemption] = []
    for number, (when, _order, kind, shopper, payload) in enumerate(timeline, start=1):
        if kind == "enroll":
            referrer = by_ref.get(shopper.referrer_ref or "")
            services.customer_enroll(
                customer=shopper.customer,
                at=when,
                referral_code=referrer.customer.referral_code if referrer else None,
            )
        elif kind == "redeem":
            name, use = payload
            reward = next((r for r in rewards if r.name == name), None)
            redemption = _redeem(shopper, reward, when=when, key=f"demo-{_slug(name)}") if reward else None
            if redemption is not None:
                redemptions.append(redemption)
                if use:
                    _voucher_use(redemption, when + dt.timedelta(minutes=4))
        else:
            store = shopper.store if rng.random() < 0.85 else rng.choice(STORES)
            external_id = f"{RECEIPT_PREFIX}{store}-{number:07d}"
            result = services.purchase_record(
                integration=pos,
                external_id=external_id,
                customer_ref=shopper.ref,
                amount=sum((Decimal(line["amount"]) for line in payload), Decimal("0")),
                currency=settings.PROGRAM_CURRENCY,
                occurred_at=when,
                lines=payload,
            )
            receipts.append((external_id, shopper, when, payload))
            while shopper.vouchers_to_use:
                _voucher_use(shopper.vouchers_to_use.pop(), when + dt.timedelta(minutes=1))
            if result.balance is not None and not shopper.saver:
                redemptions += _redeem_maybe(
                    rng, shopper, rewards, balance=result.balance, when=when, key=external_id
                )

    refunds = _refunds_record(rng, pos, receipts, now)
    events = _events_record(rng, pos, members, history_start, now)
    for offset in range(14):
        services.birthday_bonuses_award(on_date=today - dt.timedelta(days=offset))
    services.tiers_recalculate(on_date=today)
    services.vouchers_expire(now=now)
    # One member changed their mind: a voucher cancelled, its points returned.
    issued = [r for r in redemptions if r.customer.external_ref != ANNA_REF]
    issued = Redemption.objects.filter(pk__in=[r.pk for r in issued], state=Redemption.State.ISSUED).order_by(
        "pk"
    )
    cancelled = issued.first()
    if cancelled is not None:
        services.redemption_cancel(redemption_id=cancelled.pk, reason="Changed their mind at the till")

    # When each customer was first known: their first visit or enrolment, not the day of the seed.
    for shopper in shoppers:
        Customer.objects.filter(pk=shopper.customer.pk).update(created_at=min(shopper.first_seen or now, now))
    return (
        f"{len(shoppers)} customers ({len(members)} members), "
        f"{len(receipts)} purchases over {months} months, {refunds} refunds, {events} events, "
        f"{len(redemptions)} redemptions. The truth to check the program-effect page against: "
        f"members visit {PROGRAM_EFFECT:.0%} more often after joining, "
        f"about {_added_days(shoppers, today):.0f} purchase days added in the last 12 months."
    )


def _added_days(shoppers: list[Shopper], today: dt.date) -> float:
    """Expected purchase days the program added in the 12 calendar months up to today's (the
    window of the page's "incremental purchase days")."""
    index = today.year * 12 + today.month - 1 - 11
    first = dt.date(index // 12, index % 12 + 1, 1)
    return sum(added for s in shoppers for month, added in s.added_days.items() if month >= first)


def _goal_pick(rng: random.Random, rewards: list[Reward]) -> Reward | None:
    """The reward a member saves up for: the cheap ones are the popular ones."""
    if not rewards:
        return None
    return rng.choices(rewards, weights=[1 / reward.cost_points**0.8 for reward in rewards])[0]


def _redeem_maybe(rng, shopper: Shopper, rewards, *, balance: int, when: dt.datetime, key: str) -> list:
    """After a visit, a member who can afford the reward they want often takes it: most vouchers
    are used at once at the till, some on the next visit, a few are forgotten (and expire)."""
    if shopper.goal is None or balance < shopper.goal.cost_points or rng.random() < 0.4:
        return []
    redemption = _redeem(shopper, shopper.goal, when=when + dt.timedelta(minutes=2), key=f"demo-{key}")
    shopper.goal = _goal_pick(rng, rewards)
    if redemption is None:
        return []
    roll = rng.random()
    if roll < 0.7:
        _voucher_use(redemption, when + dt.timedelta(minutes=3))
    elif roll < 0.9:
        shopper.vouchers_to_use.append(redemption)
    return [redemption]


def _redeem(shopper: Shopper, reward: Reward, *, when: dt.datetime, key: str) -> Redemption | None:
    """A redemption at `when` (its row says so too), or None when the rules refuse it (tier, stock, limit)."""
    try:
        result = services.reward_redeem(
            customer=shopper.customer, reward_id=reward.pk, idempotency_key=key, now=when
        )
    except DomainError:
        return None
    Redemption.objects.filter(pk=result.redemption.pk).update(created_at=when)
    return result.redemption


def _voucher_use(redemption: Redemption, when: dt.datetime) -> None:
    # A voucher that expired before the next visit is refused; the nightly job marks it expired.
    with contextlib.suppress(DomainError):
        services.voucher_use(code=redemption.voucher_code, now=when)


def _refunds_record(rng: random.Random, pos: Integration, receipts, now: dt.datetime) -> int:
    """A few returns: a whole basket, or one line of it, a day or two later."""
    candidates = [r for r in receipts if sum(Decimal(line["amount"]) for line in r[3]) >= 60]
    count = 0
    for external_id, _shopper, when, lines in rng.sample(
        candidates, k=min(len(candidates), max(2, len(receipts) // 150))
    ):
        if rng.random() < 0.5:
            amount = sum((Decimal(line["amount"]) for line in lines), Decimal("0"))
        else:
            amount = Decimal(rng.choice(lines)["amount"])
        services.purchase_refund(
            integration=pos,
            purchase_external_id=external_id,
            refund_id=f"{external_id}-R1",
            amount=amount,
            occurred_at=min(when + dt.timedelta(hours=rng.randint(2, 48)), now),
        )
        count += 1
    return count


def _events_record(rng: random.Random, pos: Integration, members: list[Shopper], start, now) -> int:
    """Newsletter signups and product reviews from the web shop (reviews are capped at 3 a month)."""
    count = 0
    for shopper in members:
        moments = []
        if shopper.consent and rng.random() < 0.5:
            moments.append(
                ("newsletter_signup", {"list": "weekly"}, shopper.enrolled_at + dt.timedelta(hours=2))
            )
        if rng.random() < 0.15 or shopper.ref == ANNA_REF:
            month_start = max(start, shopper.enrolled_at)
            for _ in range(rng.choice([1, 2, 4]) if shopper.ref != ANNA_REF else 4):
                when = month_start + (now - month_start) * rng.random()
                sku = rng.choice([sku for items in PRODUCTS.values() for sku, _price in items])
                moments.append(("product_review", {"sku": sku, "rating": rng.choice([3, 4, 5, 5])}, when))
        for event_type, data, when in sorted(moments, key=lambda m: m[2]):
            if when >= now:
                continue
            count += 1
            services.event_record(
                integration=pos,
                external_id=f"{RECEIPT_PREFIX}EV-{shopper.ref[len(CUSTOMER_PREFIX) :]}-{count:05d}",
                customer_ref=shopper.ref,
                event_type=event_type,
                data=data,
                occurred_at=when,
            )
    return count


# --- Simulated shoppers for the analytics ---------------------------------------------------
# Thousands of shoppers whose behaviour follows the models the analytics fit, with a known
# program effect, so the estimates can be checked against the truth. Written in bulk (no
# points: these purchases go straight to the table), under their own prefix.

SIM_PREFIX = "SIM-"
# Members buy this much more often after joining (their daily purchase rate × 1.3).
TRUE_PROGRAM_EFFECT = 0.30


@dataclass
class SimulatedShoppers:
    """The simulated population and the truth about it (arrays indexed by shopper)."""

    start: dt.date
    days: int
    rate: object  # purchase rate per day (λ) without the program
    arrival: object  # day of first visit (offset from start)
    death: object  # day the shopper silently leaves (may be after the end)
    mean_spend: object  # expected spend per purchase day (p / ν)
    enrolled: object  # day of enrollment (offset), −1 for never
    purchase_shopper: object  # per purchase day: shopper index
    purchase_day: object  # per purchase day: day offset
    purchase_amount: object  # per purchase day: amount
    effect: float
    refs: list[str] = field(default_factory=list)
    customer_ids: list[int] = field(default_factory=list)

    def true_effect(self, shopper: int, *, months: int = 6) -> tuple[float, float]:
        """Expected extra purchase days and spend per month in the `months` calendar months after
        the enrollment month, given when the shopper leaves: what a perfect estimate finds."""
        import numpy as np

        enrolled = int(self.enrolled[shopper])
        first = _month_after(self.start + dt.timedelta(days=enrolled), 1)
        end = _month_after(first, months)
        days = np.arange((first - self.start).days, (end - self.start).days)
        alive = days < self.death[shopper]
        rate = float(self.rate[shopper])
        extra = (np.exp(-rate) - np.exp(-rate * (1 + self.effect))) * alive.sum() / months
        return float(extra), float(extra * self.mean_spend[shopper])


def _month_after(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + day.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, 1)


def shoppers_simulate(
    *,
    customers: int,
    months: int,
    seed: int,
    effect: float = TRUE_PROGRAM_EFFECT,
    end: dt.date | None = None,
) -> SimulatedShoppers:
    """Draw a population (numpy, one pass per day):
    - purchase days: each day alive, a purchase with probability 1 − e^(−λ), λ ~ Gamma
      (the NBD's heterogeneity; mean 0.09 a day, about 2.7 purchase days a month);
    - leaving: after an exponential lifetime with a Gamma-distributed rate (mean 18 months),
      in continuous time like Pareto/NBD rather than at purchases like BG/NBD, so that the
      program's effect does not change how long anyone stays and the truth is known exactly;
    - spend per purchase day: Gamma(p = 6, ν) with ν ~ Gamma(q = 4, γ = 150) (Gamma-Gamma;
      mean about 56 DKK a visit);
    - enrollment with self-selection: the chance to join at all grows with the rate (heavier
      buyers join more often); a joiner joins at the first visit after a planned day drawn
      at random (on average six months after the first visit);
    - the program's effect: from the day after joining, the rate is λ × (1 + effect).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    end = end or timezone.localdate()
    total_days = max(int(round(months * 30.44)), 30)
    start = end - dt.timedelta(days=total_days - 1)
    n = max(customers, 1)
    rate = rng.gamma(shape=1.4, scale=0.09 / 1.4, size=n)
    arrival = rng.integers(0, int(total_days * 0.85), size=n)
    leave_rate = rng.gamma(shape=2.0, scale=1 / (18 * 30.44) / 2.0, size=n)
    death = arrival + rng.exponential(1 / leave_rate)
    nu = rng.gamma(shape=4.0, scale=1 / 150.0, size=n)  # rate parameter of the spend Gamma
    mean_spend = 6.0 / nu
    # Heavier buyers join more often: the chance to join at all grows with the rate; those
    # who will join do so at their first visit after a planned day (about six months in).
    joins_ever = rng.random(n) < np.minimum(0.95, 0.45 * rate / rate.mean())
    planned = np.where(joins_ever, arrival + rng.exponential(180.0, size=n), np.inf)
    enrolled = np.full(n, -1)
    shoppers, days, amounts = [], [], []
    for day in range(total_days):
        alive = (arrival <= day) & (day < death)
        member = (enrolled >= 0) & (enrolled < day)
        effective = rate * np.where(member, 1 + effect, 1.0)
        buys = alive & (rng.random(n) < 1 - np.exp(-effective))
        # The first visit always happens on the arrival day.
        buys |= arrival == day
        index = np.flatnonzero(buys)
        if not len(index):
            continue
        joins = index[(enrolled[index] < 0) & (planned[index] <= day)]
        enrolled[joins] = day
        shoppers.append(index)
        days.append(np.full(len(index), day))
        amounts.append(np.round(rng.gamma(shape=6.0, scale=1 / nu[index]), 2))
    return SimulatedShoppers(
        start=start,
        days=total_days,
        rate=rate,
        arrival=arrival,
        death=death,
        mean_spend=mean_spend,
        enrolled=enrolled,
        purchase_shopper=np.concatenate(shoppers),
        purchase_day=np.concatenate(days),
        purchase_amount=np.maximum(np.concatenate(amounts), 1.0),
        effect=effect,
    )


def simulated_shoppers_write(
    simulation: SimulatedShoppers, *, pos: Integration, log: Callable[[str], None] | None = None
) -> str:
    """Write the simulated customers and their purchases in bulk. Members get a points account
    (no points: the ledger of these rows is empty and consistent). Safe to run again: does
    nothing when simulated receipts exist."""
    import numpy as np

    from .models import PointsAccount

    if Purchase.objects.filter(external_id__startswith=SIM_PREFIX).exists():
        return "Simulated shoppers already exist: left as they are."
    log = log or (lambda message: None)
    tz = ZoneInfo(settings.TIME_ZONE)
    rng = np.random.default_rng(len(simulation.rate))
    n = len(simulation.rate)
    offset = Customer.objects.filter(external_ref__startswith=SIM_PREFIX).count()
    refs = [f"{SIM_PREFIX}{offset + i + 1:06d}" for i in range(n)]

    def moment(day: int, minute: int) -> dt.datetime:
        return dt.datetime.combine(simulation.start + dt.timedelta(days=int(day)), dt.time(7), tzinfo=tz) + (
            dt.timedelta(minutes=int(minute))
        )

    enrolled_at = [moment(day, 5) if day >= 0 else None for day in simulation.enrolled]
    Customer.objects.bulk_create(
        [
            Customer(
                external_ref=ref,
                email=f"{ref.lower()}@sim.example",
                first_name="Sim",
                last_name=ref[len(SIM_PREFIX) :],
                language="en",
                enrolled_at=enrolled_at[i],
                referral_code=f"S{offset + i + 1:07d}",
            )
            for i, ref in enumerate(refs)
        ],
        batch_size=2000,
    )
    ids = dict(Customer.objects.filter(external_ref__in=refs).values_list("external_ref", "pk"))
    simulation.refs = refs
    simulation.customer_ids = [ids[ref] for ref in refs]
    lowest = Tier.objects.order_by("min_qualifying_spend").first()
    PointsAccount.objects.bulk_create(
        [
            PointsAccount(customer_id=simulation.customer_ids[i], tier=lowest, tier_changed_at=enrolled_at[i])
            for i in range(n)
            if enrolled_at[i] is not None
        ],
        batch_size=2000,
    )
    minutes = rng.integers(0, 12 * 60, size=len(simulation.purchase_day))
    purchases = []
    for number, (shopper, day, amount, minute) in enumerate(
        zip(
            simulation.purchase_shopper.tolist(),
            simulation.purchase_day.tolist(),
            simulation.purchase_amount.tolist(),
            minutes.tolist(),
            strict=True,
        ),
        start=1,
    ):
        when = moment(day, 10 + minute)
        joined = enrolled_at[shopper]
        purchases.append(
            Purchase(
                integration=pos,
                external_id=f"{SIM_PREFIX}{number:08d}",
                customer_id=simulation.customer_ids[shopper],
                amount=Decimal(f"{amount:.2f}"),
                currency=settings.PROGRAM_CURRENCY,
                occurred_at=when,
                was_member=joined is not None and joined <= when,
                request_hash="simulated",
            )
        )
    log(f"{n} simulated shoppers; writing {len(purchases)} purchases …")
    Purchase.objects.bulk_create(purchases, batch_size=5000)
    members = int((simulation.enrolled >= 0).sum())
    return (
        f"{n} simulated shoppers ({members} members, true program effect +{simulation.effect:.0%} purchase rate), "
        f"{len(purchases)} purchases over {simulation.days} days."
    )
