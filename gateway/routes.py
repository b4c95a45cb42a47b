"""The one table of routes: ``create_app`` registers it and ``openapi`` describes it.

A ``Route`` names its view and everything the OpenAPI document says about it: parameters,
request body, success responses and the problem statuses it can answer. Statuses every
route shares are added by ``Route.problem_statuses`` (500 everywhere; 400 and 401 on
``/api/v1``; 404 with a path parameter; 400, 413 and 415 with a body).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from quart import Response
from werkzeug.routing import BaseConverter

from gateway import routes_approvals as approvals
from gateway import routes_audit as audit
from gateway import routes_executions as ex
from gateway import routes_runbooks as rb
from gateway import routes_sources as sources
from gateway import routes_system as system
from gateway import routes_triggers as triggers
from gateway.inputs import (
    EXECUTION_CURSOR,
    MAX_VERSION,
    RESERVED_RUNBOOK_IDS,
    RUNBOOK_CURSOR,
    STATUSES,
    TEXT_PATTERN,
)
from gateway.inputs import IDEMPOTENCY_KEY as KEY_PATTERN
from gateway.roles import ADMIN, AUTHOR, OPERATOR, VIEWER
from runtime.api.audit_export import MAX_BOUND_LENGTH
from runtime.model import LOG_LEVELS
from runtime.model.limits import MAX_SEQ
from runtime.model.wire import camel

View = Callable[..., Awaitable[Response]]
JSON = "application/json"


class RunbookIdConverter(BaseConverter):
    """A runbook id in a path, never ``validate``: ``GET /api/v1/runbooks/validate`` is then
    405 (only POST is allowed there), not a lookup of a runbook of that name."""

    regex = "(?!" + "|".join(f"{word}$" for word in RESERVED_RUNBOOK_IDS) + ")[^/]+"


CONVERTERS: dict[str, type[BaseConverter]] = {"runbook": RunbookIdConverter}
_RULE_VARIABLE = re.compile(r"<(?:[a-z]+:)?([A-Za-z_][A-Za-z0-9_]*)>")


@attrs.frozen
class Param:
    name: str
    location: str  # "query", "header", or "path" (a path parameter whose schema is not the default string)
    schema: dict[str, Any]
    description: str
    required: bool = False


@attrs.frozen
class Answer:
    """A success response: its schema (a component name) and media type."""

    description: str
    schema: str | None = None
    media_type: str = JSON
    headers: tuple[str, ...] = ()


@attrs.frozen
class Route:
    method: str
    rule: str
    view: View
    operation_id: str
    summary: str
    tag: str
    answers: dict[int, Answer]
    params: tuple[Param, ...] = ()
    body: str | None = None  # component schema of the request body
    body_required: bool = True
    yaml_body: bool = False
    problems: tuple[int, ...] = ()
    role: str | None = VIEWER  # the role the caller needs (gateway.roles); None: anyone who may call
    bearer: bool = True  # False: no bearer token, the request authenticates itself (a signed webhook)

    @property
    def api(self) -> bool:
        return self.rule.startswith("/api/v1/")

    @property
    def path_params(self) -> list[str]:
        return _RULE_VARIABLE.findall(self.rule)

    @property
    def openapi_path(self) -> str:
        return openapi_path(self.rule)

    def problem_statuses(self) -> list[int]:
        statuses = set(self.problems) | {500}
        if self.api:
            statuses |= {400, 401}
        if self.role is not None:
            statuses.add(403)
        if self.path_params:
            statuses.add(404)
        if self.body is not None:
            statuses |= {400, 413, 415}
        return sorted(statuses)


def openapi_path(rule: str) -> str:
    """``/api/v1/executions/<execution_id>`` -> ``/api/v1/executions/{executionId}``."""
    return _RULE_VARIABLE.sub(lambda match: "{" + camel(match.group(1)) + "}", rule)


LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000},
              "Page size, 1 to 1000 (default 50).")
RUNBOOKS_LIMIT = attrs.evolve(LIMIT, description="Page size, 1 to 1000 (default 100).")
AUDIT_FROM = Param("from", "query", {"type": "string", "maxLength": MAX_BOUND_LENGTH},
                   "The first entry: a seq, or an ISO 8601 time.")
AUDIT_TO = Param("to", "query", {"type": "string", "maxLength": MAX_BOUND_LENGTH},
                 "The last entry: a seq, or an ISO 8601 time.")
AUDIT_SEQ = Param("seq", "path", {"type": "integer", "minimum": 1, "maximum": MAX_SEQ},
                  "The entry's seq in the tenant's ledger.", required=True)
CURSOR = Param("cursor", "query", {"type": "string", "pattern": f"^({EXECUTION_CURSOR.pattern})?$"},
               "The nextCursor of the previous page (empty: the first page).")
RUNBOOKS_CURSOR = Param("cursor", "query", {"type": "string", "pattern": f"^({RUNBOOK_CURSOR.pattern})?$"},
                        "The nextCursor of the previous page (empty: the first page).")
STATUS = Param("status", "query", {"type": "string", "enum": list(STATUSES)}, "Only executions in this status.")
RUNBOOK_FILTER = Param("runbookId", "query", {"type": "string", "maxLength": 128, "pattern": TEXT_PATTERN},
                       "Only executions of this runbook.")
VERSION = Param("version", "query", {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
                "A version of the runbook (default: the latest).")
FORCE = Param("force", "query", {"type": "boolean"},
              "Start a new execution even if an identical one (same runbook version and input) is active.")
IDEMPOTENCY_KEY = Param("Idempotency-Key", "header",
                        {"type": "string", "minLength": 1, "maxLength": 255, "pattern": f"^{KEY_PATTERN.pattern}$"},
                        "Returns the execution started with this key; the same key with another input is 422.")
LOG_PARAMS = (
    Param("stepId", "query", {"type": "string", "maxLength": 128, "pattern": TEXT_PATTERN}, "Only entries of this step."),
    Param("level", "query", {"type": "string", "enum": list(LOG_LEVELS)}, "Minimum level."),
    Param("after", "query", {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
          "Only entries after this seq (the nextCursor of the previous page)."),
    Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}, "At most this many entries (default 1000)."),
)

_EXECUTION = Answer("The execution with its steps.", "Execution")
_QUEUED = Answer("Handed to the process that runs the execution, which did not answer in time: queued.",
                 "Queued")
_CONTROLLED = {200: _EXECUTION, 202: _QUEUED}
_EXECUTION_CREATED = Answer("The new execution.", "Execution", headers=("Location",))

ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", system.health, "health", "Liveness", "system",
          {200: Answer("Always ok while the process serves.", "Health")}, role=None),
    Route("GET", "/health/live", system.health, "healthLive", "Liveness", "system",
          {200: Answer("Always ok while the process serves.", "Health")}, role=None),
    Route("GET", "/health/ready", system.ready, "healthReady", "Readiness: the store answers and commits succeed",
          "system", {200: Answer("Ready.", "Health")}, problems=(503,), role=None),
    Route("GET", "/metrics", system.metrics, "metrics", "Prometheus metrics", "system",
          {200: Answer("Prometheus text format.", "Text", "text/plain")}, role=None),
    Route("GET", "/api/v1/openapi.json", system.openapi, "openapi", "This document", "system",
          {200: Answer("The OpenAPI 3.1 description of this API.", "OpenApi")}, role=None),
    # ------------------------------------------------------------------ runbooks
    Route("POST", "/api/v1/runbooks", rb.register_runbook, "registerRunbook",
          "Register a runbook (a new version if the id exists) for the caller's tenant", "runbooks",
          {201: Answer("Registered.", "Registered", headers=("Location",))},
          body="RunbookDocument", yaml_body=True, problems=(422,), role=AUTHOR),
    Route("GET", "/api/v1/runbooks", rb.list_runbooks, "listRunbooks",
          "The latest version of every runbook the tenant sees (its own and the shared ones), by id",
          "runbooks", {200: Answer("A page of runbooks.", "RunbookPage")}, params=(RUNBOOKS_LIMIT, RUNBOOKS_CURSOR),
          problems=(422,)),
    Route("POST", "/api/v1/runbooks/validate", rb.validate_runbook, "validateRunbook",
          "Validate a runbook document; registers nothing", "runbooks",
          {200: Answer("The validation report.", "ValidationReport")}, body="AnyDocument", yaml_body=True),
    Route("GET", "/api/v1/runbooks/<runbook:runbook_id>", rb.get_runbook, "getRunbook", "A runbook (latest or ?version=)",
          "runbooks", {200: Answer("The runbook and its document.", "Runbook")}, params=(VERSION,), problems=(422,)),
    Route("GET", "/api/v1/runbooks/<runbook_id>/executions", rb.list_runbook_executions, "listRunbookExecutions",
          "Executions of a runbook, newest first", "runbooks",
          {200: Answer("A page of executions.", "ExecutionPage")}, params=(STATUS, LIMIT, CURSOR), problems=(422,)),
    # ------------------------------------------------------------------ executions
    Route("POST", "/api/v1/executions", ex.start_execution, "startExecution", "Start an execution", "executions",
          {201: _EXECUTION_CREATED, 200: Answer("An identical execution (or one with this Idempotency-Key) "
                                                "already exists: that one.", "Execution")},
          params=(FORCE, IDEMPOTENCY_KEY), body="StartExecution", problems=(404, 422), role=OPERATOR),
    Route("GET", "/api/v1/executions", ex.list_executions, "listExecutions", "Executions, newest first",
          "executions", {200: Answer("A page of executions.", "ExecutionPage")},
          params=(RUNBOOK_FILTER, STATUS, LIMIT, CURSOR), problems=(422,)),
    Route("GET", "/api/v1/executions/<execution_id>", ex.get_execution, "getExecution",
          "An execution with its steps", "executions", {200: _EXECUTION}),
    Route("POST", "/api/v1/executions/<execution_id>/pause", ex.pause_execution, "pauseExecution",
          "Pause: no new step starts; steps in flight finish", "control", _CONTROLLED,
          body="ControlRequest", body_required=False, problems=(409, 422), role=OPERATOR),
    Route("POST", "/api/v1/executions/<execution_id>/resume", ex.resume_execution, "resumeExecution",
          "Resume a paused execution", "control", _CONTROLLED,
          body="ControlRequest", body_required=False, problems=(409, 422), role=OPERATOR),
    Route("POST", "/api/v1/executions/<execution_id>/cancel", ex.cancel_execution, "cancelExecution",
          "Cancel: every step in flight is cancelled at once (reason required)", "control", _CONTROLLED,
          body="CancelRequest", problems=(409, 422), role=OPERATOR),
    Route("POST", "/api/v1/executions/<execution_id>/steps/<step_id>/retry", ex.retry_step, "retryStep",
          "Retry a failed or rejected step of a failed execution", "control", _CONTROLLED,
          body="ControlRequest", body_required=False, problems=(409, 422), role=OPERATOR),
    Route("POST", "/api/v1/executions/<execution_id>/steps/<step_id>/complete", ex.complete_step, "completeStep",
          "End a failed, waiting or awaiting-approval step as succeeded, with the output given: done by hand",
          "control", _CONTROLLED, body="CompleteStepRequest", problems=(409, 422), role=OPERATOR),
    Route("POST", "/api/v1/executions/<execution_id>/steps/<step_id>/skip", ex.skip_step, "skipStep",
          "End a failed, waiting or awaiting-approval step as skipped (its dependents as after a 'when' skip)",
          "control", _CONTROLLED, body="SkipStepRequest", problems=(409, 422), role=OPERATOR),
    Route("POST", "/api/v1/executions/<execution_id>/fork", ex.fork_execution, "forkExecution",
          "A new execution that keeps the outputs of the steps before fromStep and runs the rest", "control",
          {201: _EXECUTION_CREATED}, body="ForkRequest", problems=(422,), role=OPERATOR),
    Route("POST", "/api/v1/executions/<execution_id>/replay", ex.replay_execution, "replayExecution",
          "A new execution of the same runbook version with the same input and context", "control",
          {201: _EXECUTION_CREATED}, body="ControlRequest", body_required=False, problems=(422,), role=OPERATOR),
    Route("POST", "/api/v1/executions/<execution_id>/steps/<step_id>/approvals", ex.submit_approval,
          "submitApproval", "Approve or reject an approval step as the calling user", "control", _CONTROLLED,
          body="ApprovalRequest", problems=(403, 409, 422), role=None),  # the step's approvers decide
    Route("POST", "/api/v1/executions/<execution_id>/steps/<step_id>/approvals/delegate", ex.delegate_approval,
          "delegateApproval", "Hand the calling approver's vote on an approval step to a user or role:NAME",
          "control", _CONTROLLED, body="DelegationRequest", problems=(403, 409, 422), role=None),
    Route("GET", "/api/v1/approvals", approvals.list_approvals, "listApprovals",
          "Approval steps waiting for the calling user's decision, across the tenant's executions", "control",
          {200: Answer("A page of pending approvals (newest execution first).", "PendingApprovalPage")},
          params=(LIMIT, CURSOR), problems=(422,), role=None),  # only what the caller may decide
    Route("GET", "/api/v1/executions/<execution_id>/logs", ex.execution_logs, "executionLogs",
          "Structured log entries, oldest first", "records", {200: Answer("A page of log entries.", "LogPage")},
          params=LOG_PARAMS, problems=(422,)),
    Route("GET", "/api/v1/executions/<execution_id>/evidence", ex.execution_evidence, "executionEvidence",
          "Evidence items (call-service responses, approval decisions, executors' own)", "records",
          {200: Answer("Every evidence item.", "EvidencePage")}),
    Route("GET", "/api/v1/executions/<execution_id>/audit", ex.execution_audit, "executionAudit",
          "Audit entries, oldest first", "records", {200: Answer("Every audit entry.", "AuditPage")}),
    Route("GET", "/api/v1/audit/export", audit.export_audit, "exportAudit",
          "The tenant's audit ledger as a bundle (tar): manifest, hash-chained entries, payloads, "
          "checkpoints, evidence; check it offline with `runbooks audit verify`", "records",
          {200: Answer("A tar of the bundle.", "Text", "application/x-tar")},
          params=(AUDIT_FROM, AUDIT_TO), problems=(422,), role=ADMIN),
    Route("GET", "/api/v1/audit/verify", audit.verify_audit, "verifyAudit",
          "Check the tenant's whole audit ledger as the offline verifier would", "records",
          {200: Answer("The verdict: ok, or the first bad seq and why.", "AuditVerdict")}),
    Route("POST", "/api/v1/audit/<seq>/erase", audit.erase_audit_data, "eraseAuditData",
          "Erase the payload of the tenant's audit entry seq (a person's data): the entry, its payload's hash "
          "and the chain stay, and the erasure is audited (audit.payload_erased)", "records",
          {200: Answer("The entry as it is now: erased, its data null.", "AuditEntry")},
          params=(AUDIT_SEQ,), body="ErasureRequest", problems=(409, 422), role=ADMIN),
    Route("GET", "/api/v1/executions/<execution_id>/explain", ex.explain_execution, "explainExecution",
          "Why the execution and each step are as they are: sentences and the decision records", "records",
          {200: Answer("The execution's explanation (stepId null), then each step's.", "ExplanationList")},
          params=(attrs.evolve(LOG_PARAMS[0], description="Only this step."),), problems=(422,)),
    Route("GET", "/api/v1/executions/<execution_id>/commands/<command_id>", ex.command_status, "commandStatus",
          "What became of a command answered 202 (queued for the process that owns the execution)", "control",
          {200: Answer("Queued, applied (with the execution as it was then) or refused (why).", "CommandStatus")}),
    Route("GET", "/api/v1/executions/<execution_id>/stream", ex.stream_execution, "streamExecution",
          "Server-sent events: one 'execution' event per committed state, until the execution finishes",
          "records", {200: Answer("text/event-stream of 'execution' events.", "ExecutionEvent", "text/event-stream")},
          problems=(503,)),
    Route("POST", "/api/v1/events", ex.publish_event, "publishEvent",
          "Publish an event to the steps of the caller's tenant waiting on it (or retain it)", "events",
          {202: Answer("Delivered to n waiting steps, or retained for a later one.", "PublishResult")},
          body="EventRequest", problems=(422, 429), role=OPERATOR),
    # ------------------------------------------------------------------ event sources
    Route("POST", "/api/v1/hooks/<source_id>", sources.receive_hook, "receiveHook",
          "A signed webhook of an event source: authenticated by its signature (no bearer token); "
          "the answer comes once its event is committed", "sources",
          {202: Answer("Published: delivered to n waiting steps, or retained.", "HookResult"),
           200: Answer("A delivery seen before ({duplicate: true}), or Slack's URL verification answered.",
                       "HookResult")},
          problems=(401, 413, 422, 429, 503), role=None, bearer=False),
    Route("GET", "/api/v1/sources", sources.list_sources, "listSources",
          "The event sources of the caller's tenant, with their counters", "sources",
          {200: Answer("Every source of the tenant.", "SourcePage")}),
    Route("GET", "/api/v1/sources/<source_id>/audit", sources.source_audit, "sourceAudit",
          "Refused deliveries of a source (bad or stale signatures, bodies that make no event), oldest first",
          "sources", {200: Answer("Every audit entry of the source.", "AuditPage")}),
    # ------------------------------------------------------------------ triggers
    Route("GET", "/api/v1/triggers", triggers.list_triggers, "listTriggers",
          "The triggers (schedules, event rules) of the latest version of every runbook the tenant sees",
          "triggers", {200: Answer("Every trigger, by runbook and id.", "TriggerPage")}),
    Route("POST", "/api/v1/runbooks/<runbook_id>/triggers/<trigger_id>/enable", triggers.enable_trigger,
          "enableTrigger", "Switch a trigger on (audited)", "triggers", {200: Answer("The trigger.", "Trigger")},
          body="ControlRequest", body_required=False, problems=(409, 422), role=OPERATOR),
    Route("POST", "/api/v1/runbooks/<runbook_id>/triggers/<trigger_id>/disable", triggers.disable_trigger,
          "disableTrigger", "Switch a trigger off: it starts nothing until enabled (audited)", "triggers",
          {200: Answer("The trigger.", "Trigger")}, body="ControlRequest", body_required=False,
          problems=(409, 422), role=OPERATOR),
    Route("GET", "/api/v1/runbooks/<runbook_id>/triggers/<trigger_id>/audit", triggers.trigger_audit,
          "triggerAudit", "Who switched the trigger on or off, oldest first", "triggers",
          {200: Answer("Every audit entry of the trigger.", "AuditPage")}),
)
