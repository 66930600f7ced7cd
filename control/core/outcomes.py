"""Finished requests, charged exactly once together with their records, in batches.

:func:`settle_outcomes` takes a batch of finished requests and, in the caller's ONE
transaction, for each request not seen before:

- closes its per-request hold (settled, or released when nothing is charged), or consumes
  what it spent from its balance lease (``control.core.leases``);
- charges the provider-reported cost **in full**: one ``usage`` ledger entry whose
  idempotency key is ``usage:<request id>`` (unique per account), so a replay can never
  charge twice. What the reservation doesn't cover is taken from the available balance;
  beyond that the account goes into debt by exactly the overage and the record is flagged
  (``debt``). A hold released meanwhile (its proxy was declared dead) changes nothing: the
  charge is made from the available balance.
- inserts its request record (``request_records.request_id`` is unique too).

So no charge exists without its record and no record without its charge, and replaying a
batch (after a crash, from a journal, or a retried commit) is a no-op for the requests
already committed. A concurrent duplicate raises IntegrityError and the whole batch rolls
back: retry it, and the committed requests are skipped.

The statements per batch are fixed, whatever its size (executemany, prebuilt Core
statements): one SELECT of known request ids, one UPDATE of holds, one SELECT ... FOR UPDATE
of the wallets (account order, so concurrent batches never deadlock), one SELECT ... FOR
UPDATE of the leases, and one executemany each for wallets, leases, keys, ledger and
records; statements for nothing to do are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import String, bindparam, case, insert, select, update
from sqlalchemy.orm import Session

from control.core import records, wallet
from control.core.base import Money, UTCDateTime, utcnow
from control.core.config import Config
from control.core.errors import ValidationError
from control.core.models import ApiKey, BalanceLease, Hold, LedgerEntry, RequestRecord, Wallet

_W, _K, _H, _L, _BL, _R = (t.__table__ for t in (  # type: ignore[attr-defined]
    Wallet, ApiKey, Hold, LedgerEntry, BalanceLease, RequestRecord))

USAGE_KEY_PREFIX = "usage:"

_WALLET_DELTA = (update(_W).where(_W.c.account_id == bindparam("p_acct", type_=String()))
                 .values(balance=_W.c.balance - bindparam("p_charge", type_=Money),
                         held=_W.c.held - bindparam("p_release", type_=Money),
                         updated_at=bindparam("p_now", type_=UTCDateTime())))
_LEASE_DELTA = (update(_BL).where(_BL.c.id == bindparam("p_lease", type_=String()))
                .values(amount=_BL.c.amount - bindparam("p_consumed", type_=Money),
                        updated_at=bindparam("p_now", type_=UTCDateTime())))
_KEY_DELTA = (update(_K).where(_K.c.key_id == bindparam("p_key", type_=String()))
              .values(spent=_K.c.spent + bindparam("p_charge", type_=Money),
                      budget_held=_K.c.budget_held - bindparam("p_release", type_=Money)))
_INSERT_LEDGER = insert(_L)
_INSERT_RECORD = insert(_R)
# Built once (their cache keys are memoized): a statement built per batch costs more
# Python than its execution. IN lists are expanding parameters.
_KNOWN = select(_R.c.request_id).where(
    _R.c.request_id.in_(bindparam("p_ids", expanding=True)))
_CLOSE_HOLDS = (update(_H).where(_H.c.id.in_(bindparam("p_holds", expanding=True)),
                                 _H.c.status == "open")
                .values(status=case((_H.c.id.in_(bindparam("p_released", expanding=True)),
                                     "released"), else_="settled"),
                        closed_at=bindparam("p_now", type_=UTCDateTime()))
                .returning(_H.c.id, _H.c.account_id, _H.c.key_id, _H.c.amount))
_LOCK_WALLETS = (select(_W.c.account_id, _W.c.balance, _W.c.held)
                 .where(_W.c.account_id.in_(bindparam("p_accts", expanding=True)))
                 .order_by(_W.c.account_id).with_for_update())
_LOCK_LEASES = (select(_BL.c.id, _BL.c.amount)
                .where(_BL.c.id.in_(bindparam("p_leases", expanding=True)),
                       _BL.c.status == "open")
                .order_by(_BL.c.id).with_for_update())


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished request, as the proxy hands it over.

    ``record`` holds the request-record fields (``request_id``, ``account_id`` and
    ``key_id`` among them); its ``cost`` and ``debt`` are set here from the charge.
    ``charge`` is the provider-reported (or documented estimated) cost, 0 for a refused or
    failed request. At most one of ``hold_id`` (a per-request hold) and ``lease_id`` (the
    lease it reserved ``lease_amount`` in) is set."""

    record: Mapping[str, Any]
    charge: int = 0
    hold_id: str | None = None
    lease_id: str | None = None
    lease_amount: int = 0
    estimated: bool = False

    @property
    def request_id(self) -> str:
        return str(self.record["request_id"])

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe form (metadata only) for the outcome journal."""
        rec = dict(self.record)
        if isinstance(rec.get("time"), datetime):
            rec["time"] = rec["time"].isoformat()
        return {"record": rec, "charge": self.charge, "hold_id": self.hold_id,
                "lease_id": self.lease_id, "lease_amount": self.lease_amount,
                "estimated": self.estimated}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Outcome:
        return cls(record=dict(data["record"]), charge=int(data["charge"]),
                   hold_id=data.get("hold_id"), lease_id=data.get("lease_id"),
                   lease_amount=int(data.get("lease_amount") or 0),
                   estimated=bool(data.get("estimated")))


@dataclass(slots=True)
class Settlement:
    """What a batch did: per new request id its charge; ids already committed; debts."""

    charged: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    debt: dict[str, int] = field(default_factory=dict)  # request id -> overage owed
    statements: int = 0


def _check(o: Outcome) -> None:
    if o.charge < 0 or o.lease_amount < 0:
        raise ValidationError("a charge must not be negative", "charge")
    if o.hold_id is not None and o.lease_id is not None:
        raise ValidationError("an outcome has a hold or a lease, not both", "hold_id")
    if o.charge and not o.record.get("account_id"):
        raise ValidationError("a charge needs an account", "account_id")


def settle_outcomes(session: Session, outcomes: Iterable[Outcome], *,
                    config: Config | None = None) -> Settlement:
    """Charge, close and record a batch exactly once (see the module docstring). Flushes;
    the caller owns the transaction. With ``config``, low-balance notices are queued."""
    result = Settlement()
    batch: dict[str, Outcome] = {}
    for o in outcomes:
        _check(o)
        batch.setdefault(o.request_id, o)  # the same request twice in one batch: once
    if not batch:
        return result
    conn = session.connection()  # Core all the way: no ORM work per statement
    known = set(conn.execute(_KNOWN, {"p_ids": list(batch)}).scalars())
    result.statements += 1
    result.skipped = sorted(known)
    todo = [o for rid, o in batch.items() if rid not in known]
    if not todo:
        return result
    now = utcnow()

    # 1. close the per-request holds still open (one UPDATE ... RETURNING)
    hold_ids = [o.hold_id for o in todo if o.hold_id is not None]
    closed: dict[str, Any] = {}
    if hold_ids:
        released = [o.hold_id for o in todo if o.hold_id is not None and not o.charge]
        closed = {r.id: r for r in conn.execute(_CLOSE_HOLDS, {
            "p_holds": hold_ids, "p_released": released, "p_now": now})}
        result.statements += 1

    # 2. lock the wallets (account order), then the leases
    accounts = sorted({str(o.record["account_id"]) for o in todo if o.record.get("account_id")}
                      | {h.account_id for h in closed.values()})
    wallets: dict[str, list[int]] = {}
    if accounts:
        wallets = {r.account_id: [r.balance, r.held]
                   for r in conn.execute(_LOCK_WALLETS, {"p_accts": accounts})}
        result.statements += 1
    lease_ids = sorted({o.lease_id for o in todo if o.lease_id is not None})
    lease_left: dict[str, int] = {}
    if lease_ids:
        lease_left = {r.id: r.amount
                      for r in conn.execute(_LOCK_LEASES, {"p_leases": lease_ids})}
        result.statements += 1

    # 3. the money, request by request, in memory
    wallet_delta: dict[str, list[int]] = {}  # account -> [charge, release]
    key_delta: dict[str, list[int]] = {}  # key -> [charge, release]
    lease_delta: dict[str, int] = {}
    ledger_rows: list[dict[str, Any]] = []
    record_rows: list[dict[str, Any]] = []
    before = {a: w[0] for a, w in wallets.items()}
    for o in todo:
        rid, charge = o.request_id, o.charge
        account_id = o.record.get("account_id")
        release = 0
        hold = closed.get(o.hold_id) if o.hold_id is not None else None
        if hold is not None:
            release = hold.amount
            if hold.key_id is not None:
                key_delta.setdefault(hold.key_id, [0, 0])[1] += hold.amount
        elif o.lease_id is not None and o.lease_id in lease_left:
            release = min(charge, o.lease_amount, lease_left[o.lease_id])
            lease_left[o.lease_id] -= release
            lease_delta[o.lease_id] = lease_delta.get(o.lease_id, 0) + release
        if release:
            holder = hold.account_id if hold is not None else str(account_id)
            wallet_delta.setdefault(holder, [0, 0])[1] += release
            wallets[holder][1] -= release
        owed = 0
        if charge and account_id:
            w = wallets.get(str(account_id))
            if w is None:
                raise ValidationError("the account has no wallet", "account_id")
            available = w[0] - w[1]  # after this request's reservation went back
            owed = charge - max(available, 0) if charge > available else 0
            w[0] -= charge
            wallet_delta.setdefault(str(account_id), [0, 0])[0] += charge
            if o.record.get("key_id"):
                key_delta.setdefault(str(o.record["key_id"]), [0, 0])[0] += charge
            ledger_rows.append({
                "account_id": account_id, "kind": "usage", "amount": -charge,
                "balance_after": w[0], "idempotency_key": USAGE_KEY_PREFIX + rid,
                "params_hash": None, "reference": rid, "reason": None, "actor": "proxy",
                "estimated": o.estimated, "created_at": now})
            result.charged[rid] = charge
            if owed:
                result.debt[rid] = owed
        record_rows.append(records.record_row({**o.record, "cost": charge, "debt": bool(owed)}))

    # 4. write it all: one executemany per table
    if wallet_delta:
        conn.execute(_WALLET_DELTA, [
            {"p_acct": a, "p_charge": c, "p_release": r, "p_now": now}
            for a, (c, r) in sorted(wallet_delta.items())])
        result.statements += 1
    consumed = [{"p_lease": lid, "p_consumed": c, "p_now": now}
                for lid, c in sorted(lease_delta.items()) if c]
    if consumed:  # (an empty executemany is an error: a batch of uncharged lease requests)
        conn.execute(_LEASE_DELTA, consumed)
        result.statements += 1
    if key_delta:
        conn.execute(_KEY_DELTA, [{"p_key": k, "p_charge": c, "p_release": r}
                                  for k, (c, r) in sorted(key_delta.items())])
        result.statements += 1
    if ledger_rows:
        conn.execute(_INSERT_LEDGER, ledger_rows)
        result.statements += 1
    conn.execute(_INSERT_RECORD, record_rows)
    result.statements += 1
    wallet.expire_rows(session, wallet_delta, key_delta)
    if config is not None:
        for account_id, balance_before in before.items():
            if wallets[account_id][0] < balance_before:
                wallet.notify_if_low(session, config, account_id, balance_before,
                                     wallets[account_id][0])
    return result


def charged_request_ids(session: Session, request_ids: Sequence[str]) -> set[str]:
    """Which of these requests are already committed (charged and recorded)."""
    return set(session.scalars(select(_R.c.request_id)
                               .where(_R.c.request_id.in_(list(request_ids)))))
