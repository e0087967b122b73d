"""The printed result of a run: every number behind the decision and every change, exactly."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Any

from services.rollout.actions import Plan
from services.rollout.readout import Readout


def report(plan: Plan, readout: Readout | None, *, dry_run: bool, applied: bool,
           evaluated_at: datetime, window: str) -> dict[str, Any]:
    d = plan.decision
    actions: list[dict[str, Any]] = [
        {"type": "kubernetes", "kind": p.kind, "method": p.method, "path": p.path,
         "query": p.query, "content_type": p.content_type, "body": p.body,
         "summary": p.summary} for p in plan.patches]
    actions += [{"type": "stage", "op": c.op, "stage": c.stage, "version": c.version,
                 "summary": c.summary} for c in plan.stage_changes]
    return {
        "decision": d.action,
        "reasons": d.reasons,
        "production": d.production,
        "candidate": d.candidate,
        "evaluated_at": evaluated_at.isoformat(),
        "window": window,
        "checks": [asdict(c) for c in d.checks],
        "readout": None if readout is None else {
            "stable": asdict(readout.stable), "canary": asdict(readout.canary),
            "canary_serving": list(readout.canary_serving), "queries": readout.queries},
        "actions": actions,
        "dry_run": dry_run,
        "applied": applied,
    }


def as_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, default=str, sort_keys=False)


def as_text(doc: dict[str, Any]) -> str:
    lines = [f"decision: {doc['decision'].upper()}  (candidate {doc['candidate']} vs "
             f"production {doc['production']}, window {doc['window']} ending "
             f"{doc['evaluated_at']})"]
    for check in doc["checks"]:
        lines.append(f"  {check['name']:<13} {check['verdict'].upper():<13} {check['summary']}")
    if not doc["checks"]:
        lines += [f"  {reason}" for reason in doc["reasons"]]
    if not doc["actions"]:
        lines.append("actions: none")
    else:
        header = ("would do (dry run, nothing changed)" if doc["dry_run"]
                  else "done" if doc["applied"] else "planned")
        lines.append(f"actions {header}:")
        for action in doc["actions"]:
            if action["type"] == "kubernetes":
                query = "&".join(f"{k}={v}" for k, v in action["query"].items())
                lines.append(f"  {action['method']} {action['path']}?{query}  "
                             f"[{action['content_type']}]  # {action['summary']}")
                lines.append("    " + json.dumps(action["body"], indent=2)
                             .replace("\n", "\n    "))
            else:
                lines.append(f"  {action['summary']}")
    return "\n".join(lines)
