"""What a decision changes, as data first (so --dry-run can print it), then carried out.

Order: the canary's traffic goes to 0 first, the stage pointers move second. If the stage
write fails after the drain, nothing is half-served: the next run sees a canary without
traffic and waits, and the error exit tells a human to look.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from services.rollout.decision import Decision
from services.rollout.errors import RolloutError
from services.rollout.traffic import Patch, Traffic
from shared.repository import ModelRepository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageChange:
    op: Literal["set", "clear"]
    stage: str
    version: int
    """`set`: the version the stage will name; `clear`: the version it names now."""

    @property
    def summary(self) -> str:
        if self.op == "set":
            return f"set stage {self.stage} -> version {self.version}"
        return f"clear stage {self.stage} (was version {self.version})"


@dataclass(frozen=True)
class Plan:
    decision: Decision
    patches: list[Patch]
    stage_changes: list[StageChange]


def stage_changes(decision: Decision) -> list[StageChange]:
    if decision.candidate is None:
        return []
    if decision.action == "promote":
        return [StageChange("set", "production", decision.candidate)]
    if decision.action == "rollback":
        return [StageChange("clear", "candidate", decision.candidate)]
    return []


def carry_out(plan: Plan, traffic: Traffic | None, repo: ModelRepository, model: str) -> None:
    for patch in plan.patches:
        if traffic is None:
            raise RolloutError(f"no Kubernetes client to send the {patch.kind} patch")
        traffic.apply(patch)
        log.info("traffic changed", extra={"kind": patch.kind, "object": patch.name,
                                           "change": patch.summary})
    for change in plan.stage_changes:
        if change.op == "set":
            repo.set_stage(model, change.stage, change.version)
        else:
            current = repo.stage(model, change.stage)
            if current != change.version:
                raise RolloutError(f"stage {change.stage} moved to {current} during the "
                                   f"readout of {change.version}; left unchanged")
            repo.clear_stage(model, change.stage)
        log.info("stage changed", extra={"model": model, "change": change.summary})
