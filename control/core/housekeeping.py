"""Background work of the long-running service (``hushgate up`` and ``hushgate serve``).

At start the privacy policy rendered from the running configuration is published (a changed
text gets a new date and queues a policy-changed notice to every account). Then, in one
daemon thread: the retention purge every ``retention.schedule_minutes`` (also sweeping
expired holds of unregistered callers), the proxy-instance sweep every
``wallet.heartbeat_seconds`` (the holds and leases of a proxy whose heartbeat stopped are
released, so a crashed proxy frees its customers' funds within about
``wallet.instance_dead_after_seconds``), and delivery of queued notifications every
``DELIVERY_SECONDS`` when ``smtp.host`` is set.

Failures are logged by exception type only and retried next round: the service stays up.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from control.core import instances, notify, policy, retention
from control.core.audit import SYSTEM
from control.core.config import Config
from control.core.context import Ctx
from control.core.db import Database

log = logging.getLogger("hushgate.housekeeping")

#: How often queued notifications are delivered (seconds).
DELIVERY_SECONDS = 30.0


class Housekeeping:
    """``start()`` publishes the policy and starts the loop; ``stop()`` ends it."""

    def __init__(self, db: Database, config: Config, *,
                 delivery_seconds: float = DELIVERY_SECONDS) -> None:
        self.db = db
        self.config = config
        self.retention_seconds = config.retention["schedule_minutes"] * 60
        self.delivery_seconds = delivery_seconds
        self.instance_sweep_seconds = float(config.wallet["heartbeat_seconds"])
        self.last_instances_expired = 0
        self.last_retention: retention.RetentionReport | None = None
        self.last_delivery: notify.DeliveryReport | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Housekeeping:
        self._guard("policy publish", self.publish_policy)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="hushgate-housekeeping",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def describe(self) -> str:
        mail = (f"delivered every {self.delivery_seconds:g}s" if self.config.smtp.get("host")
                else "queued (smtp.host not set)")
        return f"retention every {self.retention_seconds // 60} min; notifications {mail}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def publish_policy(self) -> None:
        with self.db.transaction() as session:
            version = policy.publish_policy(Ctx(session, self.config, SYSTEM))
        if version is not None:
            log.info("published privacy policy version %s", version.id)

    def run_retention(self) -> None:
        self.last_retention = retention.run_retention(self.db, self.config)
        log.info("retention: %s", self.last_retention)

    def sweep_instances(self) -> None:
        with self.db.transaction() as session:
            self.last_instances_expired = instances.sweep_dead_instances(
                session, self.config.audit_hmac_key(),
                dead_after_seconds=self.config.wallet["instance_dead_after_seconds"])
        if self.last_instances_expired:
            log.warning("released the holds and leases of %d proxy instance(s) whose "
                        "heartbeat stopped", self.last_instances_expired)

    def deliver(self) -> None:
        self.last_delivery = notify.deliver_pending(self.db, self.config)

    def _loop(self) -> None:
        next_retention = time.monotonic()
        # Without smtp.host messages stay queued (`hushgate notify deliver` reports it).
        next_delivery = next_retention if self.config.smtp.get("host") else math.inf
        next_instances = next_retention
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_retention:
                self._guard("retention run", self.run_retention)
                next_retention = time.monotonic() + self.retention_seconds
            if now >= next_instances:
                self._guard("proxy instance sweep", self.sweep_instances)
                next_instances = time.monotonic() + self.instance_sweep_seconds
            if now >= next_delivery:
                self._guard("notification delivery", self.deliver)
                next_delivery = time.monotonic() + self.delivery_seconds
            wait = min(next_retention, next_delivery, next_instances) - time.monotonic()
            self._stop.wait(max(0.05, min(wait, 60.0)))

    @staticmethod
    def _guard(what: str, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception as exc:  # noqa: BLE001 - keep the service alive; retry next round
            log.error("%s failed (%s)", what, type(exc).__name__)
