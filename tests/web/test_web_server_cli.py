"""ControlServer (cheroot on port 0; HTTPS with a test CA), listen-address policy, and the
control-plane CLI."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import time
import urllib.error
import urllib.request

import click
import pytest
import yaml
from click.testing import CliRunner
from flask import jsonify, request
from web_helpers import config_with, sqlite_only

from control.cli.common import HushgateGroup, State
from control.cli.runtime import serve_command
from control.cli.web import COMMANDS
from control.core.errors import ConfigError
from control.web.ext import resolve_secure_cookies
from control.web.server import (
    BODY_MARGIN_BYTES,
    ControlServer,
    check_listen,
    guard_environ,
    ssl_adapter,
)


@pytest.fixture
def pki(test_ca):
    return test_ca


def tls_config(config, pki, **control):
    return config_with(config, control={
        "tls": {"cert_file": pki["cert.pem"], "key_file": pki["key.pem"]}, **control})


def https_get(url: str, cafile: str | None, **kw):
    ctx = ssl.create_default_context(cafile=cafile)
    return urllib.request.urlopen(url, timeout=10, context=ctx, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_records(caplog, logger: str, timeout: float = 5.0) -> list[logging.LogRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = [r for r in caplog.records if r.name == logger]
        if records:
            return records
        time.sleep(0.05)
    return []


@sqlite_only
def test_control_server_serves_and_stops(config, db):
    server = ControlServer(config, host="127.0.0.1", port=0, db=db).start()
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        assert server.describe().startswith(f"admin UI http://127.0.0.1:{server.port}/admin/")
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as resp:
            assert resp.status == 200 and resp.read() == b"ok\n"
            assert resp.headers["Server"] == "hushgate"
        with pytest.raises(ConfigError, match="cannot listen on .*Address already in use"):
            ControlServer(config, host="127.0.0.1", port=server.port, db=db).start()
        with urllib.request.urlopen(f"{server.url}/admin/login", timeout=10) as resp:
            cookie = resp.headers["Set-Cookie"]
            assert "hushgate_session=" in cookie
            assert "Secure" not in cookie  # plain HTTP on loopback: browsers wouldn't send it
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.url}/healthz", timeout=2)


@sqlite_only
def test_proxy_headers_are_not_trusted(config, db):
    server = ControlServer(config, host="127.0.0.1", port=0, db=db, threads=2).start()

    def echo():
        return jsonify(remote=request.remote_addr, scheme=request.scheme, host=request.host,
                       forwarded=[k for k, _ in request.headers.items()
                                  if "forward" in k.lower() or k.lower() == "x-real-ip"])

    server.app.add_url_rule("/_test_echo", "test_echo", echo)
    try:
        req = urllib.request.Request(f"{server.url}/_test_echo", headers={
            "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example", "Forwarded": "for=203.0.113.9;proto=https",
            "X-Real-IP": "203.0.113.9"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read())
    finally:
        server.stop()
    assert body == {"remote": "127.0.0.1", "scheme": "http",
                    "host": f"127.0.0.1:{server.port}", "forwarded": []}
    # Nor can an absolute-form request line claim another scheme: cheroot refuses it.
    server = ControlServer(config, host="127.0.0.1", port=0, db=db, threads=2).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.request("GET", f"https://127.0.0.1:{server.port}/healthz")
            with conn.getresponse() as resp:
                assert resp.status == 400
        finally:
            conn.close()
    finally:
        server.stop()


def test_guard_environ_keeps_the_rest():
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        return [b""]

    guard_environ(app, scheme="http")({
        "HTTP_X_FORWARDED_FOR": "x", "HTTP_X_FORWARDED_PREFIX": "/x", "HTTP_FORWARDED": "for=x",
        "HTTP_X_REAL_IP": "x", "HTTP_USER_AGENT": "ua", "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "https"}, None)
    assert seen == {"HTTP_USER_AGENT": "ua", "REMOTE_ADDR": "127.0.0.1",
                    "wsgi.url_scheme": "http"}


@sqlite_only
def test_request_bodies_are_size_limited(config, db):
    server = ControlServer(config, host="127.0.0.1", port=0, db=db, threads=2).start()
    limit = server.app.config["MAX_CONTENT_LENGTH"]
    try:
        # Just over the app's limit: the app answers with its own 413 page.
        body = b"username=" + b"a" * limit
        req = urllib.request.Request(f"{server.url}/admin/login", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        with err.value:
            assert err.value.code == 413
            assert b"Request body too large." in err.value.read()
        # Far over it: cheroot refuses on the declared length, before reading any body.
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.putrequest("POST", "/api/v1/accounts")
            conn.putheader("Content-Length", str(limit + BODY_MARGIN_BYTES + 1))
            conn.endheaders()
            with conn.getresponse() as resp:
                assert resp.status == 413
        finally:
            conn.close()
    finally:
        server.stop()


@sqlite_only
def test_listen_policy(config, pki):
    check_listen(config, "127.0.0.1")
    check_listen(config, "::1")
    with pytest.raises(ConfigError, match="not loopback") as err:
        check_listen(config, "0.0.0.0")
    assert "control.tls" in str(err.value) and "allow_plain_http" in str(err.value)
    with pytest.raises(ConfigError, match="not loopback"):
        ControlServer(config, host="0.0.0.0", port=0).start()
    check_listen(config_with(config, control={"allow_plain_http": True}), "0.0.0.0")
    tls = tls_config(config, pki)
    check_listen(tls, "127.0.0.1")
    check_listen(tls, "0.0.0.0")  # HTTPS: any address
    check_listen(tls, "::")
    half = config_with(config, control={"tls": {"cert_file": pki["cert.pem"]}})
    with pytest.raises(ConfigError, match="control.tls: set both"):
        check_listen(half, "127.0.0.1")


@sqlite_only
def test_unusable_certificate_or_key(config, pki, tmp_path):
    def refused(cert, key):
        cfg = config_with(config, control={"tls": {"cert_file": cert, "key_file": key}})
        with pytest.raises(ConfigError) as err:
            ControlServer(cfg, host="127.0.0.1", port=0).start()
        message = str(err.value)
        assert message.startswith("control.tls") and "\n" not in message
        return message

    assert "control.tls.cert_file" in refused(str(tmp_path / "missing.pem"), pki["key.pem"])
    assert "control.tls.key_file" in refused(pki["cert.pem"], str(tmp_path / "missing.pem"))
    assert "KEY_VALUES_MISMATCH" in refused(pki["cert.pem"], pki["other_key.pem"])
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert "not a PEM certificate" in refused(str(tmp_path / "junk.pem"), pki["key.pem"])
    assert "not a PEM certificate" in refused(pki["cert.pem"], str(tmp_path / "junk.pem"))

    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((tmp_path / "key.pem").read_bytes(), None)
    (tmp_path / "enc.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    assert "encrypted" in refused(pki["cert.pem"], str(tmp_path / "enc.pem"))
    assert ssl_adapter(config) is None


@sqlite_only
def test_https_with_configured_certificate(config, db, pki, caplog):
    caplog.set_level(logging.DEBUG, logger="hushgate.control")
    port = free_port()  # a fixed port, as `serve` uses, so it can be bound again below
    server = ControlServer(tls_config(config, pki), host="127.0.0.1", port=port, db=db,
                           threads=2).start()
    try:
        assert server.url == f"https://127.0.0.1:{port}"
        assert server.describe().startswith(f"admin UI https://127.0.0.1:{port}/admin/")
        with https_get(f"{server.url}/healthz", pki["ca.pem"]) as resp:
            assert resp.status == 200 and resp.read() == b"ok\n"
            assert resp.headers["Server"] == "hushgate"
        with https_get(f"https://localhost:{port}/admin/login", pki["ca.pem"]) as resp:
            cookie = resp.headers["Set-Cookie"]
            assert "hushgate_session=" in cookie and "; Secure" in cookie
            assert "HttpOnly" in cookie
            assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"

        # A client that does not trust the test CA refuses the certificate.
        with pytest.raises(urllib.error.URLError) as err:
            https_get(f"{server.url}/healthz", None)
        assert isinstance(err.value.reason, ssl.SSLCertVerificationError)

        # Plain HTTP on the TLS port gets no page.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/healthz")
            with conn.getresponse() as resp:
                assert resp.status == 400 and b"only speaks HTTPS" in resp.read()
        except (OSError, http.client.HTTPException):
            pass  # or the connection is dropped
        finally:
            conn.close()

        # cheroot's error log keeps the exception type only: no client address or detail.
        records = wait_for_records(caplog, "hushgate.control")
        assert records
        text = "\n".join(r.getMessage() for r in records)
        assert "127.0.0.1" not in text and "GET" not in text and "healthz" not in text
        assert all(r.exc_info is None for r in records)
    finally:
        server.stop()

    # stop() frees the port: nothing answers, and a new server can bind it again.
    with socket.socket() as probe, pytest.raises(OSError):
        probe.settimeout(2)
        probe.connect(("127.0.0.1", port))
    again = ControlServer(tls_config(config, pki), host="127.0.0.1", port=port, db=db,
                          threads=2).start()
    try:
        assert again.port == port
        with https_get(f"{again.url}/healthz", pki["ca.pem"]) as resp:
            assert resp.status == 200
    finally:
        again.stop()


@sqlite_only
def test_silent_client_does_not_stall_https(config, db, pki):
    """The TLS handshake runs in a worker, not the accept loop: a client that connects and
    sends nothing holds one worker (until cheroot's timeout), not the whole listener."""
    server = ControlServer(tls_config(config, pki), host="127.0.0.1", port=0, db=db,
                           threads=4).start()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
    try:
        time.sleep(0.3)  # accepted
        started = time.monotonic()
        with https_get(f"{server.url}/healthz", pki["ca.pem"]) as resp:
            assert resp.status == 200
        assert time.monotonic() - started < 3
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_error_log_keeps_only_the_exception_type(caplog):
    caplog.set_level(logging.DEBUG, logger="hushgate.control")
    from control.web.server import _Server

    server = _Server(("127.0.0.1", 0), lambda environ, start_response: [b""])
    try:
        raise ValueError("password=hunter2 from 198.51.100.7")
    except ValueError:
        server.error_log("request from 198.51.100.7: password=hunter2", logging.ERROR,
                         traceback=True)
    server.error_log("Client ('198.51.100.7', 5555) lost")
    text = caplog.text
    assert "ValueError" in text
    assert "hunter2" not in text and "198.51.100.7" not in text and "Traceback" not in text


def test_secure_cookie_resolution():
    tls = {"tls": {"cert_file": "c.pem", "key_file": "k.pem"}}
    assert resolve_secure_cookies({**tls, "secure_cookies": None}, "127.0.0.1") is True
    assert resolve_secure_cookies({**tls, "secure_cookies": False}, "127.0.0.1") is True
    assert resolve_secure_cookies({"secure_cookies": None}, "127.0.0.1") is False
    assert resolve_secure_cookies({"secure_cookies": None}, "0.0.0.0") is True
    assert resolve_secure_cookies({"secure_cookies": True}, "::1") is True
    assert resolve_secure_cookies({"secure_cookies": False}, "0.0.0.0") is False


@pytest.fixture
def make_cli(config, tmp_path):
    """``make_cli(**control)``: a CLI runner on a config file with these control keys."""

    def make(**control):
        path = tmp_path / "hushgate.yaml"
        raw = {"data_dir": str(config.data_dir), "database": {"url": config.database_url},
               "auth": {"bcrypt_cost": 4}}
        if control:
            raw["control"] = control
        path.write_text(yaml.safe_dump(raw))

        @click.group(cls=HushgateGroup)
        @click.pass_context
        def root(ctx: click.Context) -> None:
            ctx.obj = State(str(path))
            ctx.call_on_close(ctx.obj.close)

        for command in [*COMMANDS, serve_command]:
            root.add_command(command)
        runner = CliRunner()
        return lambda *args, **kw: runner.invoke(root, list(args), catch_exceptions=False,
                                                 **kw)

    return make


@pytest.fixture
def cli(make_cli):
    return make_cli()


@sqlite_only
def test_serve_refuses_unsafe_listeners_in_one_line(make_cli, db, pki, tmp_path):
    def one_line_error(r):
        assert r.exit_code == 1, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
        assert "Traceback" not in r.output
        return lines[0]

    line = one_line_error(make_cli()("serve", "--host", "0.0.0.0", "--port", "0"))
    assert "not loopback" in line and "control.tls" in line
    bad = make_cli(tls={"cert_file": str(tmp_path / "missing.pem"), "key_file": pki["key.pem"]})
    assert "control.tls.cert_file" in one_line_error(bad("serve", "--port", "0"))
    mismatched = make_cli(tls={"cert_file": pki["cert.pem"], "key_file": pki["other_key.pem"]})
    assert "control.tls" in one_line_error(mismatched("serve", "--port", "0"))


def test_users_and_tokens_cli(cli, db, tmp_path):
    r = cli("users", "create", "alice", "--role", "admin", input="alice password 1\n")
    assert r.exit_code == 0, r.output
    assert cli("users", "create", "alice", input="alice password 1\n").exit_code == 1
    assert cli("users", "create", "bo", input="x" * 12 + "\n").exit_code == 1  # bad name
    # Never on the command line (where `ps` shows it): from stdin or a file only.
    r = cli("users", "create", "carol", "--password", "carol password 1")
    assert r.exit_code == 2 and "No such option" in r.output
    pw_file = tmp_path / "pw"
    pw_file.write_text("carol password 1\n")
    assert cli("users", "create", "carol", "--password-file", str(pw_file)).exit_code == 0
    r = cli("users", "set-password", "carol", input="carol password 2\n")
    assert r.exit_code == 0 and "sessions have ended" in r.output
    assert cli("users", "set-password", "carol", input="short\n").exit_code == 1
    assert cli("users", "set-password", "nobody", input="nobody password 1\n").exit_code == 1
    assert "alice" in cli("users", "list").output
    r = cli("tokens", "create", "alice", "--scope", "write", "--json")
    assert r.exit_code == 0

    token = json.loads(r.output)
    assert token["token"].startswith("hga_") and token["scope"] == "write"
    listed = cli("tokens", "list").output
    assert token["key_id"] in listed and token["token"] not in listed
    assert cli("tokens", "create", "nobody").exit_code == 1
    assert cli("tokens", "revoke", token["key_id"]).exit_code == 0
    assert "revoked" in cli("tokens", "list", "--user", "alice").output
    assert cli("tokens", "revoke", "nope").exit_code == 1
