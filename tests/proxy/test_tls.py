"""The proxy listener serves TLS with the configured certificate (checked by a client that
trusts only a test CA), and the safe options refuse a plain non-loopback listener."""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import json
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from proxy_helpers import make_config

from control.core.errors import ConfigError
from proxy_addons.runner import mitmproxy_options


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca_and_leaf(tmp_path):
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("hushgate test CA"))
          .issuer_name(_name("hushgate test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {}
    for name, data in (("ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
                       ("cert.pem", leaf.public_bytes(serialization.Encoding.PEM)),
                       ("key.pem", key.private_bytes(serialization.Encoding.PEM,
                                                     serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))):
        (tmp_path / name).write_bytes(data)
        paths[name] = str(tmp_path / name)
    return paths


def test_tls_listener_with_configured_certificate(make_gateway, tmp_path):
    paths = make_ca_and_leaf(tmp_path)
    gw = make_gateway(proxy={"tls": {"cert_file": paths["cert.pem"],
                                     "key_file": paths["key.pem"]}})
    ctx = ssl.create_default_context(cafile=paths["ca.pem"])
    conn = http.client.HTTPSConnection("localhost", gw.port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/v1/models", headers={"authorization": f"Bearer {gw.key}"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == 200 and body["data"]
        assert conn.sock.getpeercert()["subject"] == ((("commonName", "localhost"),),)
    finally:
        conn.close()
    rec = gw.last_record()
    assert (rec["endpoint"], rec["status"]) == ("models", 200)


def test_plain_listener_off_loopback_refused(tmp_path):
    config = make_config(tmp_path, f"sqlite:///{tmp_path}/x.db",
                         proxy={"listen_host": "0.0.0.0"})  # noqa: S104
    with pytest.raises(ConfigError):
        mitmproxy_options(config)
    allowed = make_config(tmp_path, f"sqlite:///{tmp_path}/x.db",
                          proxy={"listen_host": "0.0.0.0", "allow_plain_http": True})  # noqa: S104
    opts = mitmproxy_options(allowed)
    assert opts["flow_detail"] == 0 and opts["connection_strategy"] == "lazy"
    assert opts["ssl_insecure"] is False and opts["http2"] is False
