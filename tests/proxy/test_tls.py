"""The proxy listener serves TLS with the configured certificate (checked by a client that
trusts only a test CA), and the safe options refuse a plain non-loopback listener."""

from __future__ import annotations

import http.client
import json
import ssl

import pytest
from proxy_helpers import make_config

from control.core.errors import ConfigError
from proxy_addons.runner import mitmproxy_options


def test_tls_listener_with_configured_certificate(make_gateway, test_ca):
    paths = test_ca
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
