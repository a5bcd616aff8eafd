import pytest

from rewards.services import customer_enroll
from tests.factories import CustomerFactory, IntegrationFactory, program_rules_set, standard_tiers


@pytest.fixture
def program(db):
    """A typical program: 1 point per unit, Bronze/Silver/Gold, 24-month expiry."""
    program_rules_set(points_per_unit=1, minimum_spend=0, expiry_months=24, signup_bonus=50)
    return standard_tiers()


@pytest.fixture
def integration(db):
    return IntegrationFactory(name="pos")


@pytest.fixture
def member(program):
    customer, _ = customer_enroll(customer=CustomerFactory())
    return customer
