"""Who people are: logins (User). Customers and staff roles build on it."""

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils.translation import gettext_lazy as _


class User(AbstractUser):
    """A login: a member using the portal or a staff member using the panel.

    Custom from the very first migration so that fields can be added later
    without the pain of swapping the user model.
    """

    email = models.EmailField(_("email address"), blank=True, db_index=True)

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
