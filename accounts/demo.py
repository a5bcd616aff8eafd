"""Demo logins: one staff member, one customer. Idempotent."""

from .models import User

DEMO_PASSWORD = "demo-loyalty-2026"  # noqa: S105 -- printed by make demo on purpose


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

    customer, _ = User.objects.get_or_create(
        username="customer",
        defaults={"email": "anna.larsen@demo.example", "first_name": "Anna", "last_name": "Larsen"},
    )
    customer.set_password(DEMO_PASSWORD)
    customer.save()
    logins.append(("customer", customer.username, DEMO_PASSWORD))
    return logins
