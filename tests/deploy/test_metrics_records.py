"""A real proxy's own ``GET /metrics`` after real traffic (real mitmproxy, the simulator, the
openai and anthropic SDKs, SQLite and PostgreSQL): the scraped values equal the sums of the
request records it wrote, no key, key id, account id or request id appears in the exposition,
and a forwarded (non-loopback) scrape without the token is refused."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))
from proxy_helpers import PROVIDER_KEY, PROVIDER_KEY_ENV, catalog, setup_account  # noqa: E402

from control.core import metrics, records  # noqa: E402
from control.core.db import Database  # noqa: E402
from control.core.models import RequestRecord  # noqa: E402
from control.simulator import Simulator  # noqa: E402
from proxy_addons.runner import ProxyServer  # noqa: E402

pytestmark = pytest.mark.slow


def test_scrape_equals_the_records_of_real_traffic(config_factory, db_url, monkeypatch) -> None:
    import anthropic
    import openai

    monkeypatch.setenv(PROVIDER_KEY_ENV, PROVIDER_KEY)
    sim = Simulator(port=0)
    sim.start()
    try:
        config = config_factory(db_url, proxy={"record_flush_ms": 20}, **catalog(sim.base_url))
        db = Database.from_config(config)
        account_id, key_id, key = setup_account(config, db, 10_000_000)
        pm = metrics.ProxyMetrics.from_config(config)
        with ProxyServer(config, db, observer=pm) as proxy, \
                openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0) as oa, \
                anthropic.Anthropic(base_url=proxy.url, api_key=key, max_retries=0) as an, \
                openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key[:-4] + "AAAA",
                              max_retries=0) as wrong:
            oa.chat.completions.create(model="gpt-test", max_tokens=20,
                                       messages=[{"role": "user", "content": "hi"}])
            with oa.chat.completions.create(model="gpt-test", max_tokens=20, stream=True,
                                            messages=[{"role": "user", "content": "hi"}]) as st:
                list(st)
            oa.embeddings.create(model="embed-test", input="some text")
            with an.messages.stream(model="claude-test", max_tokens=20,
                                    messages=[{"role": "user", "content": "hi"}]) as s:
                "".join(s.text_stream)
            with pytest.raises(openai.NotFoundError):
                oa.chat.completions.create(model="no-such-model-from-a-client",
                                           messages=[{"role": "user", "content": "hi"}])
            with pytest.raises(openai.AuthenticationError):
                wrong.chat.completions.create(model="gpt-test",
                                              messages=[{"role": "user", "content": "hi"}])
            assert proxy.drain(20)
            with urllib.request.urlopen(f"{proxy.url}/metrics", timeout=10) as resp:
                assert resp.status == 200
                text = resp.read().decode()
            forwarded = urllib.request.Request(f"{proxy.url}/metrics",
                                               headers={"X-Forwarded-For": "203.0.113.9"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(forwarded, timeout=10)
            assert refused.value.code == 403
            refused.value.close()
        with db.read_transaction() as session:
            recs = [records.record_dict(r) for r in
                    session.scalars(select(RequestRecord).order_by(RequestRecord.id))]
        db.dispose()
    finally:
        sim.stop()
    assert len(recs) == 6
    for r in recs:
        records.validate_record(r)

    s = metrics.parse(text)

    want = Counter((r["endpoint"], r["model"] or "none", str(r["status"]),
                    r["error_type"] or "none") for r in recs)
    for (endpoint, model, status, error), n in want.items():
        assert s.get("hushgate_proxy_requests_total", endpoint=endpoint, model=model,
                     status=status, error_type=error) == n, (endpoint, model, status, error)
    for model in config.models:
        mine = [r for r in recs if r["model"] == model]
        assert mine, model
        for kind in metrics.TOKEN_KINDS:
            assert s.get("hushgate_proxy_tokens_total", model=model, kind=kind) == \
                sum(r[f"{kind}_tokens"] for r in mine)
        assert s.get("hushgate_proxy_cost_minor_units_total", model=model) == \
            sum(r["cost"] for r in mine) > 0
    assert s.get("hushgate_proxy_request_duration_seconds_count") == len(recs)
    assert s.get("hushgate_proxy_request_duration_seconds_sum") == pytest.approx(
        sum(r["latency_ms"] for r in recs) / 1000)
    assert s.get("hushgate_proxy_time_to_first_byte_seconds_count") == \
        sum(1 for r in recs if r["ttfb_ms"] is not None)
    assert s.get("hushgate_proxy_requests_total", status="401") == 1
    assert s.get("hushgate_proxy_requests_total", status="404") == 1
    for secret in (key, key[:-4], key_id, account_id, "no-such-model-from-a-client",
                   *(r["request_id"] for r in recs)):
        assert secret not in text
