"""One error shape for the whole API: {"error": {"code", "message", "fields"}}."""

import logging

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from django.db.models import F
from django.http import JsonResponse
from django.utils import timezone
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler

from .errors import DomainError

DRF_CODES = {
    exceptions.ParseError: ("malformed_request", "The request body is not valid JSON."),
    exceptions.NotAuthenticated: (
        "not_authenticated",
        "Authentication is required: send `Authorization: Bearer <token>`.",
    ),
    exceptions.AuthenticationFailed: ("authentication_failed", None),
    exceptions.PermissionDenied: ("permission_denied", None),
    exceptions.NotFound: ("not_found", None),
    exceptions.MethodNotAllowed: ("method_not_allowed", None),
    exceptions.UnsupportedMediaType: (
        "unsupported_media_type",
        "Send JSON with `Content-Type: application/json`.",
    ),
    exceptions.NotAcceptable: ("not_acceptable", None),
    exceptions.Throttled: ("rate_limited", None),
}


logger = logging.getLogger(__name__)

# When PostgreSQL does not answer (down, restarting, a failover, the network between), every
# request fails fast with 503 and Retry-After instead of a 500: the transaction of the request
# was rolled back with its connection, so nothing of it is half written, and clients retry.
# Django drops a broken connection at the end of the request and opens a new one for the next,
# so service comes back by itself when the database does.
DATABASE_RETRY_AFTER_SECONDS = 5
DATABASE_UNAVAILABLE_MESSAGE = (
    "The service cannot reach its database right now; nothing was recorded unless a retry says so. "
    f"Retry in {DATABASE_RETRY_AFTER_SECONDS} seconds: a purchase, refund or event sent again with the same "
    "id, or a redemption with the same Idempotency-Key, is recorded once."
)


def database_unavailable(exc: BaseException | None) -> bool:
    """A connection-level failure of the database (psycopg's OperationalError and InterfaceError
    as Django wraps them): refused, reset, closed, server shutting down."""
    return isinstance(exc, (OperationalError, InterfaceError))


def database_unavailable_body() -> dict:
    return error_body("service_unavailable", DATABASE_UNAVAILABLE_MESSAGE)


def error_body(code: str, message: str, fields: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def validation_body(fields: dict[str, list[str]]) -> dict:
    """The 400 answer to input that failed validation: the first problem in the message, all of
    them in `fields` (also what the schema's examples of it are built with)."""
    first = next(iter(fields.items()), ("", ["invalid"]))
    message = f"{first[0]}: {first[1][0]}" if first[0] != "non_field_errors" else first[1][0]
    return error_body("invalid", f"The request is not valid. {message}", fields)


def _flatten(detail) -> dict:
    """DRF's nested validation detail → {"field": ["message", ...], "items.0.amount": [...]}."""
    out: dict[str, list[str]] = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, sub in value.items():
                # A nested serializer's own error belongs to the field that holds it ("items").
                if key == api_settings.NON_FIELD_ERRORS_KEY and prefix:
                    walk(prefix, sub)
                else:
                    walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, list) and value and not all(isinstance(v, str) for v in value):
            for index, sub in enumerate(value):
                if sub:
                    walk(f"{prefix}.{index}" if prefix else str(index), sub)
        else:
            items = value if isinstance(value, list) else [value]
            out.setdefault(prefix or "non_field_errors", []).extend(str(v) for v in items)

    walk("", detail)
    return out


# Answers that say the integration's call failed: what it sent was wrong or refused, or the
# server failed. A member's own situation (unknown customer, too few points, a used voucher)
# is an answer, not a failure of the integration.
FAILURE_CODES = {
    "malformed_request",
    "invalid",
    "conflict",
    "payload_too_large",
    "unsupported_media_type",
    "not_acceptable",
    "method_not_allowed",
    "rate_limited",
    "server_error",
}


def integration_failure_record(request, *, code: str, message: str) -> bool:
    """Count a failed call against the integration that made it (Integration.failed_calls,
    last_failure_at, last_failure), for the staff dashboard's alert. One UPDATE; never lets
    the bookkeeping break the error answer itself. False when the database was unavailable."""
    from .models import Integration

    integration = getattr(request, "_auth", None)  # set once authentication ran; no second try
    if not isinstance(integration, Integration) or code not in FAILURE_CODES:
        return True
    if transaction.get_connection().needs_rollback:
        return True
    try:
        with transaction.atomic():
            Integration.objects.filter(pk=integration.pk).update(
                failed_calls=F("failed_calls") + 1,
                last_failure_at=timezone.now(),
                last_failure=f"{code}: {message}"[:200],
            )
    except DatabaseError as exc:
        logger.warning("could not record a failed call of integration %s", integration.pk, exc_info=True)
        return not database_unavailable(exc)
    return True


def api_exception_handler(exc, context):
    response = _api_exception_response(exc, context)
    if not database_unavailable(exc):
        request = context.get("request")
        if response is None:
            name = exc.__class__.__name__
            recorded = integration_failure_record(request, code="server_error", message=name)
        elif isinstance(response.data, dict) and "error" in response.data:
            error = response.data["error"]
            recorded = integration_failure_record(request, code=error["code"], message=error["message"])
        else:
            recorded = True
        if not recorded:
            # The token is known from memory (rewards.authentication), so a bad request can
            # get this far with the database gone. Answer as every other request does then:
            # 503, retry later (the retry will hear what was wrong with it).
            return _api_exception_response(OperationalError("database unavailable"), context)
    return response


def _api_exception_response(exc, context):
    if database_unavailable(exc):
        logger.warning("API answered 503: the database is unavailable (%s)", exc.__class__.__name__)
        return Response(
            database_unavailable_body(),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, DomainError):
        return Response(error_body(exc.code, exc.message, exc.fields), status=exc.http_status)
    if isinstance(exc, RequestDataTooBig):
        return Response(
            error_body(
                "payload_too_large", "The request body is too large (5 MB at most; batches: 1,000 items)."
            ),
            status=413,
        )
    if isinstance(exc, TooManyFieldsSent):
        return Response(error_body(*TOO_MANY_FIELDS), status=400)
    if isinstance(exc, exceptions.ValidationError):
        return Response(validation_body(_flatten(exc.detail)), status=400)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code, message = next(
        ((c, m) for cls, (c, m) in DRF_CODES.items() if isinstance(exc, cls)), ("error", None)
    )
    detail = getattr(exc, "detail", "")
    response.data = error_body(code, message or str(detail))
    return response


TOO_MANY_FIELDS = ("too_many_parameters", "The request has too many parameters (1,000 at most).")


def api_bad_request(request, exception=None):
    """JSON 400 for requests Django refuses before a view (e.g. over 1,000 query parameters)."""
    if isinstance(exception, TooManyFieldsSent):
        body = error_body(*TOO_MANY_FIELDS)
    else:
        body = error_body("bad_request", "The request is malformed.")
    return JsonResponse(body, status=status.HTTP_400_BAD_REQUEST)


def api_not_found(request, exception=None):
    """JSON 404 for unknown URLs under /api/ (pages keep Django's HTML 404)."""
    return JsonResponse(
        error_body("not_found", "There is no such API endpoint."), status=status.HTTP_404_NOT_FOUND
    )
