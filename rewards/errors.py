"""Domain errors: a stable code, a message for humans, and the HTTP status an API maps them to."""


class DomainError(Exception):
    code = "invalid"
    http_status = 422

    def __init__(self, message: str, *, code: str | None = None, fields: dict | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.fields = fields or {}


class NotFound(DomainError):
    code = "not_found"
    http_status = 404


class Conflict(DomainError):
    code = "conflict"
    http_status = 409


class NotAMember(DomainError):
    code = "not_a_member"


class InsufficientPoints(DomainError):
    code = "insufficient_points"


class PointsDebt(DomainError):
    code = "points_debt"


class RewardUnavailable(DomainError):
    code = "reward_unavailable"
