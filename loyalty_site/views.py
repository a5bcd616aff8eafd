from django.shortcuts import render
from django.utils import timezone


def home(request):
    """The public front page: what the program is and how to join."""
    return render(request, "home.html", {"today": timezone.localdate()})
