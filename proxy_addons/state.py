"""What hushgate knows about one request, and the values its stages hand each other.

:class:`FlowState` lives in ``flow.metadata`` and only the Gateway reads or writes that
(``proxy_addons.gateway``); stages receive it as an argument. It holds metadata only: never
a body, a header value or a key.

:class:`Admission` is the one ticket to the provider: only :func:`proxy_addons.admission.admit`
can build one (after authenticate, route and reserve all allowed the request), and
:func:`proxy_addons.forward.forward` accepts nothing else.

A stage refuses a request by raising :class:`Refusal`: the Gateway answers it in the
endpoint's wire format. Any other exception is logged by type name only (its text could
carry request content) and answered as a hushgate error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from proxy_addons.pricing import Usage

if TYPE_CHECKING:
    from control.core.config import Model
    from control.core.keys import KeyPrincipal
    from control.core.proxy_money import Reservation

log = logging.getLogger("hushgate.proxy")


class Refusal(Exception):  # noqa: N818 - a refusal is an outcome, not a bug
    """A request hushgate answers itself: ``status`` + a safe ``message`` + an error code.
    ``details`` are extra numeric/name fields for the JSON error (never content)."""

    def __init__(self, status: int, code: str, message: str, *,
                 retry_after: int | None = None, details: dict[str, Any] | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.details = details
        self.param = param


_ADMIT = object()  # only proxy_addons.admission passes this: see Admission.__post_init__


@dataclass(frozen=True, slots=True)
class Admission:
    """A request authenticated, routed and reserved: the only thing forward accepts."""

    token: object = field(repr=False)
    model: Model
    upstream_body: bytes
    reservation: Reservation

    def __post_init__(self) -> None:
        if self.token is not _ADMIT:
            raise TypeError("an Admission is built by proxy_addons.admission.admit only")


@dataclass(slots=True)
class FlowState:
    """Everything hushgate knows about one request: metadata only, never content."""

    request_id: str
    time: datetime
    started: float = field(default_factory=time.monotonic)
    method: str = ""
    endpoint: str = "other"
    api_format: str = "openai"  # wire format of this request's errors and stream ends
    client_ip: str | None = None
    user_agent: str | None = None
    client_close: bool = False  # the client asked for Connection: close
    request_bytes: int = 0
    deferred: Refusal | None = None  # a header-phase refusal answered once the body is read
    # admission
    key_id: str | None = None
    account_id: str | None = None
    principal: KeyPrincipal | None = None
    model: Model | None = None
    stream: bool = False
    client_wants_usage: bool = False
    reservation: Reservation | None = None  # funds reserved (lease ticket or hold)
    hold_amount: int = 0
    hold_input_tokens: int = 0
    # forward / response
    forwarded: bool = False
    forwarded_at: float | None = None
    watchdog: Any = None  # proxy_addons.forward.Watchdog while the provider is working
    upstream_status: int | None = None
    first_byte_at: float | None = None
    tap: Any = None  # proxy_addons.sse.StreamTap of a streamed answer
    usage: Usage = field(default_factory=Usage)  # reported, then charged
    text_chars: int = 0  # generated characters of a JSON answer (for estimates)
    estimated: bool = False
    response_bytes: int = 0
    failed_stage: str | None = None  # a stage after forwarding failed: charge per policy
    # outcome
    status: int = 0
    error_type: str | None = None
    cost: int = 0
    finished: bool = False
    done_at: float | None = None

    def refuse(self, status: int, code: str) -> None:
        self.status, self.error_type = status, code


def refusal_for(exc: BaseException, where: str) -> Refusal:
    """A safe refusal for an unexpected exception (its text is never shown or logged)."""
    from sqlalchemy.exc import DBAPIError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, OperationalError | DBAPIError | PoolTimeout | ConnectionError):
        log.error("hushgate: database unavailable in %s (%s)", where, type(exc).__name__)
        return Refusal(503, "service_unavailable",
                       "hushgate is temporarily unavailable; the request was not forwarded")
    log.error("hushgate: stage %s failed (%s)", where, type(exc).__name__)
    return Refusal(500, "internal_error",
                   "hushgate could not process this request; it was not forwarded")


def is_database_error(exc: BaseException) -> bool:
    from sqlalchemy.exc import DBAPIError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    return isinstance(exc, OperationalError | DBAPIError | PoolTimeout)
