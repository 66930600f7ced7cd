"""A local HTTP server that plays the part of Stripe's API the top-ups use.

Point the official SDK at it (``payments.api_base``). It implements
``POST /v1/checkout/sessions`` (form-encoded like the SDK sends it, bearer key checked,
``Idempotency-Key`` honoured) and a hosted checkout page (``GET /pay/<id>``, whose "Pay"
button ``POST /pay/<id>`` completes the session and redirects to its ``success_url``).
Completing a session sends the signed ``checkout.session.completed`` event the way Stripe does
(``Stripe-Signature: t=…,v1=HMAC-SHA256(secret, "t.body")``) to ``webhook``: a URL, or a
callable ``(body, headers) -> status`` (e.g. a Flask test client).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
import secrets
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

Deliver = Callable[[bytes, dict[str, str]], int]
_KEY_PART = re.compile(r"\[([^\]]*)\]")


def parse_form(body: str) -> dict[str, Any]:
    """``a[b][0][c]=x`` (Stripe's encoding of nested parameters) -> nested dicts/lists."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        head, _, rest = key.partition("[")
        path = [head] + _KEY_PART.findall("[" + rest) if rest else [head]
        node: Any = out
        for i, part in enumerate(path):
            last = i == len(path) - 1
            nxt: Any = value if last else ([] if path[i + 1].isdigit() else {})
            if isinstance(node, list):
                idx = int(part)
                while len(node) <= idx:
                    node.append(None)
                if node[idx] is None or last:
                    node[idx] = nxt
                node = node[idx]
            else:
                if part not in node or last:
                    node[part] = nxt
                node = node[part]
    return out


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


class StripeDouble:
    """``with StripeDouble(secret_key, webhook_secret, webhook) as stripe_api: …``"""

    def __init__(self, secret_key: str, webhook_secret: str,
                 webhook: str | Deliver | None = None) -> None:
        self.secret_key, self.webhook_secret, self.webhook = secret_key, webhook_secret, webhook
        self.sessions: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []  # every API call: path, idempotency key, params
        self.deliveries: list[tuple[str, int]] = []  # (event id, webhook status)
        self._idempotent: dict[str, tuple[int, bytes]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = False  # server_close() joins the handler threads
        self._thread = threading.Thread(target=self._server.serve_forever, name="stripe-double")

    @property
    def api_base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> StripeDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # -- Stripe's side of a payment ---------------------------------------------------------

    def create_session(self, params: dict[str, Any]) -> dict[str, Any]:
        item = params["line_items"][0]
        amount = int(item["price_data"]["unit_amount"]) * int(item.get("quantity", 1))
        sid = f"cs_test_{secrets.token_hex(12)}"
        session = {"id": sid, "object": "checkout.session", "mode": params.get("mode"),
                   "amount_total": amount, "currency": item["price_data"]["currency"],
                   "metadata": params.get("metadata", {}),
                   "client_reference_id": params.get("client_reference_id"),
                   "payment_status": "unpaid", "status": "open",
                   "success_url": params["success_url"], "cancel_url": params["cancel_url"],
                   "url": f"{self.api_base}/pay/{sid}", "payment_intent": None}
        self.sessions[sid] = session
        return session

    def complete(self, session_id: str) -> dict[str, Any]:
        """The holder paid: mark the session paid and send the signed event (as Stripe would,
        once; call ``redeliver`` to send the same event again)."""
        session = self.sessions[session_id]
        session.update(payment_status="paid", status="complete",
                       payment_intent=f"pi_test_{secrets.token_hex(12)}")
        event = {"id": f"evt_test_{secrets.token_hex(12)}", "object": "event",
                 "type": "checkout.session.completed", "created": int(time.time()),
                 "livemode": False, "data": {"object": dict(session)}}
        self.redeliver(event)
        return event

    def redeliver(self, event: dict[str, Any]) -> int:
        payload = json.dumps(event).encode()
        headers = {"Content-Type": "application/json",
                   "Stripe-Signature": sign(payload, self.webhook_secret)}
        if self.webhook is None:
            raise RuntimeError("the double has no webhook to deliver to")
        if callable(self.webhook):
            status = self.webhook(payload, headers)
        else:
            req = urllib.request.Request(self.webhook, data=payload, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                    status = resp.status
            except urllib.error.HTTPError as err:
                status = err.code
                err.close()
        self.deliveries.append((event["id"], status))
        return status

    # -- HTTP -------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json",
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, kind: str, message: str) -> None:
                body = json.dumps({"error": {"type": kind, "message": message}}).encode()
                self._send(status, body)

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                if self.path.startswith("/pay/"):
                    return self._pay(self.path.removeprefix("/pay/"))
                if self.path != "/v1/checkout/sessions":
                    return self._error(404, "invalid_request_error", "Unrecognized request URL")
                auth = self.headers.get("Authorization", "")
                if not hmac.compare_digest(auth, f"Bearer {double.secret_key}"):
                    tail = auth[-4:]
                    return self._error(401, "invalid_request_error",
                                       f"Invalid API Key provided: sk_test_****{tail}")
                params = parse_form(body)
                key = self.headers.get("Idempotency-Key")
                with double._lock:
                    double.requests.append({"path": self.path, "idempotency_key": key,
                                            "params": params})
                    if key and key in double._idempotent:
                        return self._send(*double._idempotent[key])
                    try:
                        session = double.create_session(params)
                    except (KeyError, IndexError, TypeError, ValueError):
                        return self._error(400, "invalid_request_error", "Missing parameters")
                    result = (200, json.dumps(session).encode())
                    if key:
                        double._idempotent[key] = result
                self._send(*result)

            def do_GET(self) -> None:  # noqa: N802
                session = double.sessions.get(self.path.removeprefix("/pay/"))
                if session is None:
                    return self._error(404, "invalid_request_error", "No such checkout session")
                amount = f"{session['amount_total'] / 100:.2f} {session['currency'].upper()}"
                page = (f"<!doctype html><title>Stripe test checkout</title><h1>Pay {amount}"
                        f"</h1><form method=post action='/pay/{html.escape(session['id'])}'>"
                        f"<button type=submit>Pay</button></form>")
                self._send(200, page.encode(), "text/html; charset=utf-8")

            def _pay(self, session_id: str) -> None:
                session = double.sessions.get(session_id)
                if session is None or session["status"] != "open":
                    return self._error(404, "invalid_request_error", "No open checkout session")
                double.complete(session_id)
                self._send(303, b"", "text/plain", {"Location": session["success_url"]})

        return Handler
