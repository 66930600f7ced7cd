"""External anchors: signed heads pushed to real local receivers (a TCP and a TLS syslog
listener speaking RFC 5424 with octet counting, an HTTPS server under a test CA), and
`audit verify --anchors FILE` catching a rollback no local check can see."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import socketserver
import ssl
import threading
from collections.abc import Iterator

import pytest
import yaml
from lifecycle_helpers import append_events, days_ago, drop_audit_triggers, sql

from control.core import anchors, retention
from control.core.audit_head import parse_line


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> dict[str, str]:
    """A CA Python 3.13's strict verification accepts (basicConstraints critical, keyUsage,
    SKI, AKI) and a leaf for localhost / 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = tmp_path_factory.mktemp("anchor-ca")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hushgate anchor test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                            crl_sign=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(ca_ski, critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                   ca_ski), critical=False)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": out / "ca.pem", "cert": out / "cert.pem", "key": out / "key.pem"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return {k: str(v) for k, v in paths.items()}


def _server_tls(ca) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ca["cert"], ca["key"])
    return ctx


class _Syslog(socketserver.ThreadingTCPServer):
    """An RFC 6587 octet-counting receiver keeping every message."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.messages: list[str] = []
        self.tls = tls
        self.arrived = threading.Condition()
        super().__init__(("127.0.0.1", 0), _SyslogHandler)

    def wait_for(self, n: int, timeout: float = 5.0) -> list[str]:
        """The first ``n`` messages (a connection is handled in its own thread)."""
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)

    def get_request(self):  # type: ignore[no-untyped-def]
        sock, addr = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, addr


class _SyslogHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        data = self.rfile.read()
        server = self.server
        while data:
            length, _, rest = data.partition(b" ")
            n = int(length)
            with server.arrived:  # type: ignore[attr-defined]
                server.messages.append(rest[:n].decode())  # type: ignore[attr-defined]
                server.arrived.notify_all()  # type: ignore[attr-defined]
            data = rest[n:]


class _Https(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.bodies: list[dict] = []
        super().__init__(("127.0.0.1", 0), _HttpsHandler)
        self.socket = tls.wrap_socket(self.socket, server_side=True)


class _HttpsHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve(server) -> Iterator:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def syslog_tcp():
    yield from _serve(_Syslog(None))


@pytest.fixture
def syslog_tls(ca):
    yield from _serve(_Syslog(_server_tls(ca)))


@pytest.fixture
def https_sink(ca):
    yield from _serve(_Https(_server_tls(ca)))


@pytest.fixture
def anchored(tmp_path, db_url, ca, syslog_tls, https_sink, monkeypatch):
    """A config pushing to the TLS syslog listener and the HTTPS server, and its CLI."""
    from click.testing import CliRunner
    from lifecycle_helpers import make_config

    from control.cli import cli

    audit_cfg = {"anchor_syslog": f"tls://127.0.0.1:{syslog_tls.server_address[1]}",
                 "anchor_https": f"https://localhost:{https_sink.server_address[1]}/heads",
                 "anchor_ca_file": ca["ca"]}
    cfg_file = tmp_path / "hushgate.yaml"
    cfg_file.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"),
                                        "database": {"url": db_url},
                                        "auth": {"bcrypt_cost": 4}, "audit": audit_cfg}))
    monkeypatch.setenv("HUSHGATE_ADMIN_PASSWORD", "a-long-enough-password")
    runner = CliRunner()

    def run(*args, ok=True):
        result = runner.invoke(cli, ["--config", str(cfg_file), *args])
        assert (result.exit_code == 0) == ok, result.output
        return result

    config = make_config(tmp_path, db_url, audit=audit_cfg)
    return config, run


def test_a_head_reaches_a_tcp_syslog_listener_as_rfc5424(tmp_path, db_url, syslog_tcp,
                                                          config, db, monkeypatch):
    append_events(db, config, monkeypatch, days_ago(0), n=2)
    from control.core import audit

    entry = audit.anchor(db, config)
    anchors.push_syslog(f"tcp://127.0.0.1:{syslog_tcp.server_address[1]}", entry)
    [msg] = syslog_tcp.wait_for(1)
    assert msg.startswith("<85>1 ") and " hushgate - audit-head - {" in msg
    assert parse_line(msg, config.audit_hmac_key()) == entry


def test_purges_push_signed_heads_and_verify_checks_them(anchored, db, syslog_tls,
                                                          https_sink, tmp_path, monkeypatch):
    config, run = anchored
    run("init")
    append_events(db, config, monkeypatch, days_ago(0), n=3)
    report = retention.run_retention(db, config)  # the scheduled job, and every purge
    assert report.head_problem is None
    [msg] = syslog_tls.wait_for(1)
    assert len(https_sink.bodies) == 1
    pushed = https_sink.bodies[0]["hushgate_audit_head"]
    assert parse_line(msg, config.audit_hmac_key()).as_dict() == pushed  # the same signed head
    assert pushed["seq"] == sql(db, "SELECT last_seq FROM audit_state")[0][0]
    collected = tmp_path / "collected.log"
    collected.write_text(msg + "\n")
    assert "audit chain intact" in run("audit", "verify", "--anchors", str(collected)).output

    # Someone with the database *and* the data folder rolls both back consistently: an old
    # (signed) state row, the events after it gone, the head file as it was then.
    old_state = sql(db, "SELECT last_seq, last_hash, checkpoint_seq, checkpoint_hash, "
                        "anchored_seq, state_sig FROM audit_state WHERE id = 1")[0]
    old_head = config.audit_head_path().read_text()
    append_events(db, config, monkeypatch, days_ago(0), n=2)
    retention.run_retention(db, config)
    collected.write_text("\n".join(syslog_tls.wait_for(2)) + "\n")
    drop_audit_triggers(db)
    sql(db, "DELETE FROM audit_events WHERE seq > :s", s=old_state[0])
    sql(db, "UPDATE audit_state SET last_seq = :a, last_hash = :b, checkpoint_seq = :c, "
            "checkpoint_hash = :d, anchored_seq = :e, state_sig = :f WHERE id = 1",
        a=old_state[0], b=old_state[1], c=old_state[2], d=old_state[3], e=old_state[4],
        f=old_state[5])
    config.audit_head_path().write_text(old_head)
    # Nothing on this machine can tell ...
    assert "audit chain intact" in run("audit", "verify").output
    # ... the heads collected off the machine can.
    out = run("audit", "verify", "--anchors", str(collected), ok=False).output
    assert "external anchors" in out and "newest events were removed" in out


def test_an_anchors_file_without_a_valid_head_fails(anchored, tmp_path):
    _, run = anchored
    run("init")
    forged = tmp_path / "forged.log"
    forged.write_text('<85>1 - h hushgate - audit-head - {"seq": 1, "hash": "00", '
                      '"at": "x", "prev": "00", "mac": "00"}\n')
    assert "no valid external anchor" in run("audit", "verify", "--anchors",
                                              str(forged), ok=False).output


def test_an_unreachable_sink_is_reported_not_fatal(config, db, monkeypatch, tmp_path):
    from control.core import audit

    append_events(db, config, monkeypatch, days_ago(0), n=1)
    entry = audit.anchor(db, config)
    cfg = type(config)(raw={**config.raw, "audit": {**config.raw["audit"],
                                                    "anchor_syslog": "tcp://127.0.0.1:9",
                                                    "anchor_timeout_seconds": 1}},
                       path=None, data_dir=config.data_dir, database_url=config.database_url)
    problems = anchors.push(cfg, entry)
    assert len(problems) == 1 and "syslog" in problems[0]
    assert "127.0.0.1" not in problems[0]
