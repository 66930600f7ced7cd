"""Domain errors. Messages are safe to show: they never contain secrets or content."""

from __future__ import annotations


class HushgateError(Exception):
    """Base class of every error the domain raises on purpose."""

    code = "error"


class ConfigError(HushgateError):
    code = "config_error"


class ValidationError(HushgateError):
    """Bad input. ``field`` names the offending field when there is one."""

    code = "invalid_request"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(HushgateError):
    code = "not_found"


class Conflict(HushgateError):
    code = "conflict"


class InvalidKey(HushgateError):
    """The presented API key is malformed, unknown, wrong, revoked or expired."""

    code = "invalid_api_key"


class KeyExpired(InvalidKey):
    code = "key_expired"


class KeyRevoked(InvalidKey):
    code = "key_revoked"


class AccountInactive(InvalidKey):
    code = "account_inactive"


class InsufficientFunds(HushgateError):
    code = "insufficient_funds"


class BudgetExceeded(HushgateError):
    code = "budget_exceeded"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"


class AuditChainBroken(HushgateError):
    code = "audit_chain_broken"
