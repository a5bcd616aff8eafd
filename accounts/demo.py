"""Demo logins: a superuser, one staff member per role, one customer. Idempotent."""

from django.contrib.auth.models import Group

from . import roles
from .models import User

DEMO_PASSWORD = "demo-loyalty-2026"  # noqa: S105 -- printed by make demo on purpose


# (username, role, first name, last name): one login per staff role.
DEMO_ROLE_LOGINS = [
    ("support", roles.SUPPORT, "Mikkel", "Dahl"),
    ("marketing", roles.MARKETING, "Ida", "Berg"),
    ("analyst", roles.ANALYST, "Jonas", "Vik"),
    ("programadmin", roles.PROGRAM_ADMIN, "Freja", "Lund"),
]


def demo_logins_ensure() -> list[tuple[str, str, str]]:
    """Create (or reset the password of) the demo logins; return (role, username, password)."""
    logins = []
    staff, _ = User.objects.get_or_create(
        username="staff",
        defaults={"email": "staff@demo.example", "first_name": "Sofie", "last_name": "Holm"},
    )
    staff.is_staff = True
    staff.is_superuser = True
    staff.set_password(DEMO_PASSWORD)
    staff.save()
    logins.append(("staff (admin)", staff.username, DEMO_PASSWORD))

    roles.roles_ensure(missing_groups_only=True)
    for username, role, first_name, last_name in DEMO_ROLE_LOGINS:
        member, _ = User.objects.get_or_create(
            username=username,
            defaults={"email": f"{username}@demo.example", "first_name": first_name, "last_name": last_name},
        )
        member.is_staff = True
        member.is_superuser = False
        member.set_password(DEMO_PASSWORD)
        member.save()
        member.groups.set([Group.objects.get(name=role)])
        logins.append((f"staff ({role})", member.username, DEMO_PASSWORD))

    customer, _ = User.objects.get_or_create(
        username="customer",
        defaults={"email": "anna.larsen@demo.example", "first_name": "Anna", "last_name": "Larsen"},
    )
    customer.set_password(DEMO_PASSWORD)
    if customer.email_confirmed_at is None:
        from django.utils import timezone

        customer.email_confirmed_at = timezone.now()
    customer.save()
    # Members sign in with their email address (the portal's login asks for it).
    logins.append(("customer (portal)", customer.email, DEMO_PASSWORD))
    return logins
