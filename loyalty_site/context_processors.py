from django.conf import settings


def program(request):
    """Program-wide values every template may show."""
    return {
        "PROGRAM_NAME": settings.PROGRAM_NAME,
        "PROGRAM_CURRENCY": settings.PROGRAM_CURRENCY,
    }
