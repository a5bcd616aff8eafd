"""The logins' admin. The Customer admin is registered by rewards/admin.py: it shows balances
and tiers, and accounts must not import rewards."""

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from .models import User


@admin.register(User)
class LoyaltyUserAdmin(UserAdmin):
    pass
