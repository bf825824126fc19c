"""What `apply` did or would do (policyctl.apply's answer). Light to import: the no-change answer
(unchanged.py) is built and printed without the models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .plan import Plan

if TYPE_CHECKING:
    from .pending import Pending


@dataclass
class ApplyResult:
    plan: Plan
    applied: bool                      # the kernel was changed
    dry_run: bool = False
    pending: Pending | None = None   # set with confirm=SECONDS
    repaired: list[str] = field(default_factory=list)   # engines repaired after a killed edit (engine/recover.py)
    nat: list[dict] = field(default_factory=list)   # NAT / load-balancer changes of the file's `nat:` documents
    engine: bool = True   # the file has policy engine documents (a NAT-only file leaves the engines alone)
    steer: list[str] = field(default_factory=list)   # what the file's steer section changes (bpfgate.steer.policy)

    @property
    def changed(self) -> bool:
        return self.plan.changed or bool(self.nat) or bool(self.steer)

    def to_dict(self) -> dict[str, Any]:
        d = self.plan.to_dict()
        d.update(applied=self.applied, dry_run=self.dry_run, repaired=self.repaired, nat=self.nat, steer=self.steer)
        if self.pending:
            d["confirm"] = {"deadline": self.pending.deadline, "seconds_left": round(self.pending.remaining, 1),
                            "watcher_pid": self.pending.watcher_pid}
        return d
