"""The pipeline: hushgate's addons, in the order mitmproxy runs them for every event.

Read it top to bottom: a request is answered by hushgate at the first step that refuses
it, and reaches a provider only if authenticate, route and reserve all allowed it and the
forward gate saw their flags (default deny).
"""

from __future__ import annotations

from typing import Any

from proxy_addons.authenticate import Authenticate
from proxy_addons.errorpage import ErrorPage
from proxy_addons.forward import Forward
from proxy_addons.intake import Intake
from proxy_addons.meter import Meter
from proxy_addons.record import Record
from proxy_addons.reserve import Reserve
from proxy_addons.route import Route
from proxy_addons.safety import Safety
from proxy_addons.scrub import Scrub
from proxy_addons.services import Services
from proxy_addons.settle import Settle


def build_pipeline(services: Services) -> list[Any]:
    """The addons, in order."""
    return [
        Safety(),                  # refuse mitmproxy options that leak content
        Intake(services),          # requestheaders: state, endpoint, header-only refusals
        Authenticate(services),    # request: the hushgate key (bcrypt on a worker thread)
        Route(services),           # request: body, model, scope; GET /v1/models
        Reserve(services),         # request: TPM limit, hold the worst-case cost
        Forward(services),         # request: the gate, then provider URL, headers, key
        Meter(),                   # responseheaders/response: stream tap, provider errors
        Settle(),                  # response/error: what it costs (numbers only)
        ErrorPage(),               # error: status/code of mitmproxy's own error answer (JSON)
        Record(services),          # response/error: one record -> the background writer
        Scrub(),                   # drop bodies and credentials from the flow
    ]
