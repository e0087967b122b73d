"""`python -m services.rollout`: read the stages, read Prometheus, decide, and act unless --dry-run.

The rollout is the only writer of the canary's traffic share: every run sets it to
MASKFLEET_ROLLOUT_CANARY_WEIGHT while the canary serves a candidate under test, and to 0
otherwise (no candidate, candidate not served yet, promoted or rolled back). Like KServe and
Seldon experiments, no traffic goes to a canary that has nothing ready to test.

Exit codes tell scripts what happened without parsing output (like `terraform plan
-detailed-exitcode`): 0 wait, 3 promote, 4 rollback, 1 error, 2 usage. A dry run exits with
the code of the decision it would carry out. --exit-zero makes every decision exit 0 (for the
CronJob, where a non-zero exit marks the Job failed); errors still exit 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from services.rollout.actions import Plan, carry_out, stage_changes
from services.rollout.decision import Decision, Thresholds, decide, precheck
from services.rollout.prometheus import PrometheusClient
from services.rollout.readout import Readout, read_readout
from services.rollout.report import as_json, as_text, report
from services.rollout.settings import RolloutSettings
from services.rollout.traffic import Traffic, api_client
from shared.errors import MaskfleetError
from shared.logging import configure_logging
from shared.repository import ModelRepository

EXIT_WAIT, EXIT_ERROR, EXIT_PROMOTE, EXIT_ROLLBACK = 0, 1, 3, 4
EXIT_CODES = {"wait": EXIT_WAIT, "promote": EXIT_PROMOTE, "rollback": EXIT_ROLLBACK}

log = logging.getLogger("services.rollout")


def thresholds(settings: RolloutSettings) -> Thresholds:
    return Thresholds(
        min_requests=settings.rollout_min_requests,
        max_error_ratio_increase=settings.rollout_max_error_ratio_increase,
        max_p95_ratio=settings.rollout_max_p95_ratio,
        min_feedback=settings.rollout_min_feedback,
        min_iou_delta=settings.rollout_min_iou_delta,
        require_feedback=settings.rollout_require_feedback,
        alpha=settings.rollout_alpha,
    )


def evaluation_time(settings: RolloutSettings) -> datetime:
    at = settings.rollout_evaluation_time or datetime.now(UTC)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def traffic_for(settings: RolloutSettings) -> Traffic | None:
    if not (settings.rollout_httproute or settings.rollout_nginx_canary_ingress
            or settings.rollout_grpcroute):
        return None
    return Traffic(api_client(settings.kubeconfig), settings.rollout_namespace,
                   httproute=settings.rollout_httproute,
                   stable_service=settings.rollout_stable_service,
                   canary_service=settings.rollout_canary_service,
                   nginx_canary_ingress=settings.rollout_nginx_canary_ingress,
                   grpcroute=settings.rollout_grpcroute)


def canary_weight(decision: Decision, readout: Readout | None, under_test: int) -> int:
    """The share the canary should have after this decision: `under_test` only while it
    waits on a candidate that the canary serves (seen in maskfleet_model_info), else 0."""
    if decision.action != "wait" or readout is None or decision.candidate is None:
        return 0
    return under_test if decision.candidate in readout.canary_serving else 0


def run(settings: RolloutSettings, *, dry_run: bool) -> dict[str, Any]:
    """One readout and its decision; the changes are made unless `dry_run`."""
    model, at = settings.model_name, evaluation_time(settings)
    repo = ModelRepository(settings.model_repository)
    production, candidate = repo.stage(model, "production"), repo.stage(model, "candidate")
    readout: Readout | None = None
    checked = precheck(production, candidate)
    if isinstance(checked, Decision):
        decision = checked
    else:
        with PrometheusClient(settings.prometheus_url,
                              settings.prometheus_timeout_seconds) as prometheus:
            readout = read_readout(prometheus, model=model, stable_version=checked[0],
                                   canary_version=checked[1], window=settings.rollout_window,
                                   routes=settings.rollout_routes,
                                   namespace=settings.rollout_namespace,
                                   jobs=settings.jobs_regex, at=at)
        decision = decide(readout, thresholds(settings))
    weight = canary_weight(decision, readout, settings.rollout_canary_weight)
    log.info("decision", extra={"decision": decision.action, "production": production,
                                "candidate": candidate, "reasons": decision.reasons,
                                "canary_weight": weight})
    traffic = traffic_for(settings)
    plan = Plan(decision, traffic.plan_weight(weight) if traffic else [],
                stage_changes(decision))
    if not dry_run:
        carry_out(plan, traffic, repo, model)
    return report(plan, readout, dry_run=dry_run, applied=not dry_run,
                  evaluated_at=at, window=settings.rollout_window)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.rollout",
        description="Compare the canary (stage candidate) with stable (stage production) in "
                    "Prometheus and promote, roll back or wait. Settings: MASKFLEET_* "
                    "environment variables (see docs/rollout.md).",
        epilog="exit codes: 0 wait, 3 promote, 4 rollback, 1 error, 2 usage")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the decision and the exact changes; change nothing")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    parser.add_argument("--at", metavar="TIME",
                        help="evaluate at this time (ISO 8601 or Unix seconds) instead of now")
    parser.add_argument("--exit-zero", action="store_true",
                        help="exit 0 for every decision (errors still exit 1)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.at is not None:
        overrides["rollout_evaluation_time"] = args.at
    try:
        settings = RolloutSettings(**overrides)
    except ValidationError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return EXIT_ERROR
    configure_logging(settings.log_level)
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        doc = run(settings, dry_run=args.dry_run)
    except MaskfleetError as exc:
        log.error("rollout failed", extra={"code": exc.code, "detail": exc.detail})
        print(as_json({"error": exc.code, "detail": exc.detail}) if args.json
              else f"error: {exc.detail}", file=sys.stderr)
        return EXIT_ERROR
    print(as_json(doc) if args.json else as_text(doc), flush=True)
    return EXIT_WAIT if args.exit_zero else EXIT_CODES[doc["decision"]]
