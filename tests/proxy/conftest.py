"""Fixtures for tests through the real proxy: the provider simulator, a running hushgate
proxy (in-process mitmproxy master on port 0) pointed at it, a funded account and a key."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from proxy_helpers import PROVIDER_KEY, PROVIDER_KEY_ENV, catalog, make_config, setup_account
from sqlalchemy import func, select

from control.core import keys, leases, records, wallet
from control.core.audit import Actor
from control.core.config import Config
from control.core.context import Ctx
from control.core.db import Database
from control.core.models import BalanceLease, Hold, LedgerEntry, RequestRecord, Wallet
from control.simulator import Simulator
from proxy_addons.runner import ProxyServer

ACTOR = Actor("cli", "test-admin")






@dataclass
class Gateway:
    config: Config
    db: Database
    proxy: ProxyServer | None
    sim: Any
    account_id: str
    key: str
    key_id: str
    extra_keys: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    @property
    def port(self) -> int:
        assert self.proxy is not None and self.proxy.port is not None
        return self.proxy.port

    def drain(self) -> None:
        if self.proxy is not None:
            assert self.proxy.drain(20), "the record writer did not drain"

    def records(self) -> list[dict[str, Any]]:
        self.drain()
        with self.db.read_transaction() as s:
            rows = s.scalars(select(RequestRecord).order_by(RequestRecord.id)).all()
            out = [records.record_dict(r) for r in rows]
        for r in out:
            records.validate_record(r)
        return out

    def last_record(self) -> dict[str, Any]:
        recs = self.records()
        assert recs, "no record written"
        return recs[-1]

    def balance(self) -> wallet.Balance:
        with self.db.read_transaction() as s:
            return wallet.get_balance(s, self.account_id)

    def ledger_sum(self) -> int:
        with self.db.read_transaction() as s:
            return wallet.ledger_sum(s, self.account_id)

    def open_holds(self) -> int:
        with self.db.read_transaction() as s:
            return len(s.scalars(select(Hold).where(Hold.status == "open")).all())

    def leased(self) -> int:
        """What this process's open balance leases keep of the account (not spent)."""
        with self.db.read_transaction() as s:
            return leases.open_leases(s, self.account_id)

    def assert_books_balance(self) -> wallet.Balance:
        """After the commits drained: ledger == balance, no open holds (only the proxy's
        unspent lease is held), available >= 0."""
        self.drain()
        acct = self.account_id
        # ONE statement, so one snapshot on PostgreSQL too (READ COMMITTED gives each
        # statement its own): the proxy's money thread may refill a lease meanwhile.
        row = self.db_one(select(
            Wallet.balance, Wallet.held,
            select(func.coalesce(func.sum(LedgerEntry.amount), 0))
            .where(LedgerEntry.account_id == acct).scalar_subquery(),
            select(func.coalesce(func.sum(BalanceLease.amount), 0))
            .where(BalanceLease.account_id == acct, BalanceLease.status == "open")
            .scalar_subquery(),
            select(func.count()).select_from(Hold)
            .where(Hold.account_id == acct, Hold.status == "open").scalar_subquery(),
        ).where(Wallet.account_id == acct))
        balance, held, ledger, leased, open_holds = row
        assert balance == ledger
        assert (held, open_holds) == (leased, 0)
        bal = wallet.Balance(balance, held, leased)
        assert bal.available >= 0
        return bal

    def db_one(self, statement: Any) -> Any:
        with self.db.read_transaction() as s:
            return s.execute(statement).one()

    def new_key(self, **scopes: Any) -> tuple[str, str]:
        with self.db.transaction() as session:
            key, raw = keys.create_key(Ctx(session, self.config, ACTOR), self.account_id,
                                       **scopes)
            return key.key_id, raw

    def openai(self, key: str | None = None, **kw: Any):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or self.key, max_retries=0,
                             **kw)

    def async_openai(self, key: str | None = None, **kw: Any):
        import openai

        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key or self.key,
                                  max_retries=0, **kw)

    def anthropic(self, key: str | None = None, **kw: Any):
        import anthropic

        return anthropic.Anthropic(base_url=self.url, api_key=key or self.key, max_retries=0,
                                   **kw)

    def async_anthropic(self, key: str | None = None, **kw: Any):
        import anthropic

        return anthropic.AsyncAnthropic(base_url=self.url, api_key=key or self.key,
                                        max_retries=0, **kw)


@pytest.fixture
def sim() -> Iterator[Any]:
    simulator = Simulator(port=0)
    simulator.start()
    yield simulator
    simulator.stop()




@pytest.fixture
def make_gateway(tmp_path: Path, db_url: str, sim: Any, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[Callable[..., Gateway]]:
    """``make_gateway(balance=..., proxy={...}, start=True)`` -> a running Gateway."""
    monkeypatch.setenv(PROVIDER_KEY_ENV, PROVIDER_KEY)
    made: list[Gateway] = []

    def _make(balance: int = 10_000_000, start: bool = True, base_url: str | None = None,
              db_url_override: str | None = None, **overrides: Any) -> Gateway:
        cat = catalog(base_url or sim.base_url)
        proxy_cfg = {"record_flush_ms": 20, "upstream_timeout_ms": 5_000,
                     **overrides.pop("proxy", {})}
        config = make_config(tmp_path, db_url, proxy=proxy_cfg, **cat, **overrides)
        db = Database.from_config(config)
        account_id, key_id, raw = setup_account(config, db, balance)
        proxy = None
        if start:
            run_config = config
            if db_url_override:
                run_config = make_config(tmp_path, db_url_override, proxy=proxy_cfg, **cat,
                                         **overrides)
            proxy = ProxyServer(run_config, listen_port=0).start()
        gw = Gateway(config, db, proxy, sim, account_id, raw, key_id)
        made.append(gw)
        return gw

    yield _make
    for gw in made:
        if gw.proxy is not None:
            gw.proxy.stop()
        gw.db.dispose()


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway()
