"""Admit: authenticate → route → reserve, and the :class:`Admission` forward needs.

Default deny by construction: the only way to reach the provider is an ``Admission``,
built here after all three parts allowed the request. ``GET /v1/models`` is answered from
the catalog after authentication (nothing is reserved or forwarded).
"""

from __future__ import annotations

from mitmproxy import http

from proxy_addons.authenticate import Authenticator
from proxy_addons.reserve import reserve
from proxy_addons.route import models_list, route
from proxy_addons.services import Services
from proxy_addons.state import _ADMIT, Admission, FlowState, Refusal
from proxy_addons.wire import json_response


async def admit(services: Services, authenticator: Authenticator, request: http.Request,
                state: FlowState) -> Admission | http.Response:
    """An Admission for the provider, or hushgate's own answer; raises Refusal."""
    principal = await authenticator.authenticate(request.headers, state)
    if state.endpoint == "models":
        body = models_list(services.config, principal, state.api_format)
        return json_response(200, body, request_id=state.request_id)
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise Refusal(400, "invalid_request", "compressed request bodies are not supported")
    raw = request.raw_content
    routed = route(services.config, state.endpoint, state.api_format, raw, principal)
    state.model, state.stream = routed.model, routed.stream
    state.client_wants_usage = routed.client_wants_usage
    hold = await reserve(services, principal, routed, state.request_bytes, state.request_id)
    state.reservation, state.hold_amount = hold.reservation, hold.amount
    state.hold_input_tokens = hold.input_tokens
    return Admission(_ADMIT, routed.model, routed.upstream_body, hold.reservation)
