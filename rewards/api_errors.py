"""One error shape for the whole API: {"error": {"code", "message", "fields"}}."""

from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
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


def error_body(code: str, message: str, fields: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def _flatten(detail) -> dict:
    """DRF's nested validation detail → {"field": ["message", ...], "items.0.amount": [...]}."""
    out: dict[str, list[str]] = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, sub in value.items():
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


def api_exception_handler(exc, context):
    if isinstance(exc, DomainError):
        return Response(error_body(exc.code, exc.message, exc.fields), status=exc.http_status)
    if isinstance(exc, RequestDataTooBig):
        return Response(
            error_body(
                "payload_too_large", "The request body is too large (5 MB at most; batches: 1,000 items)."
            ),
            status=413,
        )
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first = next(iter(fields.items()), ("", ["invalid"]))
        message = f"{first[0]}: {first[1][0]}" if first[0] != "non_field_errors" else first[1][0]
        return Response(error_body("invalid", f"The request is not valid. {message}", fields), status=400)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code, message = next(
        ((c, m) for cls, (c, m) in DRF_CODES.items() if isinstance(exc, cls)), ("error", None)
    )
    detail = getattr(exc, "detail", "")
    response.data = error_body(code, message or str(detail))
    return response


def api_not_found(request, exception=None):
    """JSON 404 for unknown URLs under /api/ (pages keep Django's HTML 404)."""
    return JsonResponse(
        error_body("not_found", "There is no such API endpoint."), status=status.HTTP_404_NOT_FOUND
    )
