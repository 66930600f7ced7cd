"""Admission, part 1 — authenticate: the key from ``Authorization: Bearer`` or ``x-api-key``.

The key is checked by ``control.core.keys.KeyAuthenticator``: a key already verified and
current (its generation is the change counter's, polled in the background) is answered on
the event loop by :meth:`~control.core.keys.KeyAuthenticator.cached`, with no database read
and no thread hop; otherwise :meth:`~control.core.keys.KeyAuthenticator.authenticate` runs
on a worker thread (bcrypt the first time a key is seen; revalidation by row after a
change). Requests per minute are limited here (per process, or shared by every proxy
through Redis: ``proxy_addons.limits``); the key's other scopes are checked by the stages that
know the model and the cost.

Concurrent requests with the same key share one slow check (single flight): when the key is
not in the cache (cold start, or a change to keys moved the counter), 32 concurrent requests would
otherwise pay 32 bcrypt verifies (~250 ms each at cost 12) on the worker threads and stall
every connection for seconds. Requests in flight are keyed by the authenticator's fingerprint
of the key (an HMAC under a per-process pepper), only while the check runs.
"""

from __future__ import annotations

import asyncio

from mitmproxy import http

from control.core import keys
from control.core.errors import AccountInactive, InvalidKey, KeyExpired, KeyRevoked
from control.core.keys import KeyPrincipal
from proxy_addons.services import Services
from proxy_addons.state import FlowState, Refusal


def extract_key(headers: http.Headers) -> str | None:
    """The presented key, or None. ``Authorization`` wins over ``x-api-key``."""
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() != "bearer":
            return ""
        return value.strip()
    value = headers.get("x-api-key")
    return value.strip() if value is not None else None


def refusal_for_key_error(exc: InvalidKey) -> Refusal:
    if isinstance(exc, KeyExpired):
        return Refusal(401, "key_expired", "this API key has expired")
    if isinstance(exc, KeyRevoked):
        return Refusal(401, "key_revoked", "this API key has been revoked")
    if isinstance(exc, AccountInactive):
        return Refusal(401, "account_inactive", "the account of this API key is not active")
    return Refusal(401, "invalid_api_key", "invalid API key")


class Authenticator:
    """The key check of the request phase, with single flight per key fingerprint."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._in_flight: dict[bytes, asyncio.Future[KeyPrincipal]] = {}

    async def _check(self, raw: str) -> KeyPrincipal:
        """The authenticator's answer for ``raw``, shared by concurrent identical keys."""
        fingerprint = self.services.authenticator.fingerprint(raw)
        future = self._in_flight.get(fingerprint)
        if future is None:
            future = asyncio.ensure_future(
                self.services.blocking(self.services.authenticator.authenticate, raw))
            self._in_flight[fingerprint] = future
            future.add_done_callback(lambda _: self._in_flight.pop(fingerprint, None))
        return await asyncio.shield(future)

    async def authenticate(self, headers: http.Headers, state: FlowState) -> KeyPrincipal:
        """The key's principal (RPM counted), or a Refusal (401/429)."""
        raw = extract_key(headers)
        if raw is None:
            raise Refusal(401, "missing_api_key",
                          "no API key: send it as 'Authorization: Bearer <key>' or 'x-api-key'")
        try:
            parsed = keys.parse(raw)
        except InvalidKey as exc:
            raise refusal_for_key_error(exc) from None
        try:
            principal = self.services.authenticator.cached(raw) or await self._check(raw)
        except InvalidKey as exc:
            if isinstance(exc, KeyExpired | KeyRevoked | AccountInactive):
                state.key_id = parsed.key_id  # the key exists: its id is safe metadata
            raise refusal_for_key_error(exc) from None
        finally:
            del raw
        state.key_id, state.account_id = principal.key_id, principal.account_id
        state.principal = principal
        if principal.rpm_limit is not None:
            wait = await self.services.acquire(self.services.rpm, principal.key_id,
                                               principal.rpm_limit)
            if wait is not None:
                raise Refusal(429, "rate_limited", "this API key's requests-per-minute limit "
                              "is reached", retry_after=wait)
        return principal
