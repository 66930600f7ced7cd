"""The unit-of-work context administrative services receive: session, config and actor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from control.core import audit
from control.core.config import Config
from control.core.models import AuditEvent


@dataclass
class Ctx:
    """What an administrative service needs: where to write, the rules, and who is acting."""

    session: Session
    config: Config
    actor: audit.Actor

    def audit(self, action: audit.Action, target_type: str | None = None,
              target_id: str | None = None, **details: Any) -> AuditEvent:
        """Append an audit event in this unit of work's transaction."""
        return audit.record(self.session, self.config.audit_hmac_key(), self.actor, action,
                            target_type, target_id, **details)
