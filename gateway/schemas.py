"""JSON Schemas (2020-12, as OpenAPI 3.1 uses them) of the API's bodies, by component name."""

from __future__ import annotations

from typing import Any

from gateway.bodies import MAX_DEPTH
from gateway.inputs import (
    DECISIONS,
    MAX_VERSION,
    NON_BLANK_TEXT_PATTERN,
    RESERVED_RUNBOOK_IDS,
    STATUSES,
    TEXT_PATTERN,
)
from runtime import StepStatus
from runtime.documents.validate import ID_PATTERN, MAX_STEPS, RESERVED_IDS
from runtime.model import LOG_LEVELS
from runtime.model.limits import (
    MAX_BACKOFF_MULTIPLIER,
    MAX_CONCURRENCY,
    MAX_DURATION_MS,
    MAX_RETRIES,
    MIN_BACKOFF_MULTIPLIER,
)

Schema = dict[str, Any]

ANY: Schema = {}
TIME: Schema = {"type": "string", "format": "date-time"}
TIME_OR_NULL: Schema = {"type": ["string", "null"], "format": "date-time"}
TEXT_OR_NULL: Schema = {"type": ["string", "null"]}
HASH_OR_NULL: Schema = {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(name: str) -> Schema:
    return {"anyOf": [ref(name), {"type": "null"}]}


def obj(properties: dict[str, Schema], required: tuple[str, ...] = (), *, closed: bool = False,
        description: str | None = None) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, "required": list(required)}
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def page(item: str) -> Schema:
    return obj({"items": {"type": "array", "items": ref(item)}, "nextCursor": TEXT_OR_NULL},
               ("items", "nextCursor"))


_PROBLEM_ITEM = obj({"path": {"type": "string"}, "message": {"type": "string"},
                     "stepId": {"type": "string", "description": "The step the problem is in (runbook documents)."},
                     "line": {"type": "integer", "minimum": 1,
                              "description": "The line of the text sent that the path names (runbook documents)."}},
                    ("path", "message"))

_STEP_STATE = obj({
    "status": {"type": "string", "enum": [s.value for s in StepStatus]},
    "type": {"type": "string"},
    "attempts": {"type": "integer", "minimum": 0},
    "startedAt": TIME_OR_NULL,
    "completedAt": TIME_OR_NULL,
    "output": ANY,
    "error": nullable("StepError"),
    "approvals": {"type": "array", "items": ref("Approval")},
    "progress": {"type": ["object", "null"]},
    "deadlineAt": TIME_OR_NULL,
    "childExecutionId": {**TEXT_OR_NULL, "description": "run-runbook: the child execution of this attempt."},
    "slot": {"anyOf": [{"type": "null"}, obj({"key": {"type": "string"}, "limit": {"type": "integer"},
                                              "held": {"type": "boolean"}}, ("key", "limit", "held"))],
             "description": "A step with a concurrency key: the key as rendered, its limit, and whether "
                            "it holds a slot (it stays pending until it does)."},
    "approvalRequest": {**nullable("ApprovalShown"),
                        "description": "human-approval: what the approvers are shown and its digest."},
    "delegations": {"type": "array", "items": ref("Delegation"),
                    "description": "human-approval: votes handed on in this round."},
    "escalations": {"type": "integer", "minimum": 0,
                    "description": "human-approval: the escalation stages reached in this round."},
}, ("status", "type", "attempts", "startedAt", "completedAt", "output", "error", "approvals", "progress"))

_EXECUTION = obj({
    "id": {"type": "string"},
    "runbookId": {"type": "string"},
    "runbookVersion": {"type": "integer"},
    "tenantId": {"type": "string"},
    "status": {"type": "string", "enum": list(STATUSES)},
    "input": ANY,
    "output": ANY,
    "context": {"type": "object"},
    "error": nullable("StepError"),
    "createdAt": TIME,
    "startedAt": TIME_OR_NULL,
    "completedAt": TIME_OR_NULL,
    "pausedDurationMs": {"type": "integer", "minimum": 0},
    "replayOf": TEXT_OR_NULL,
    "inputHash": {"type": "string"},
    "deadlineAt": TIME_OR_NULL,
    "parentExecutionId": {**TEXT_OR_NULL, "description": "Started by a run-runbook step of this execution."},
    "parentStepId": TEXT_OR_NULL,
    "rootExecutionId": {**TEXT_OR_NULL, "description": "A child's: the execution at the top of its tree."},
    "forkedFrom": {"type": ["object", "null"], "description": "A fork's origin: {executionId, stepId}."},
    "concurrencyKey": {**TEXT_OR_NULL, "description": "The runbook's concurrency key as rendered for this "
                                                      "start; while it waits for a slot its status is queued."},
    "steps": {"type": "object", "additionalProperties": ref("StepState"),
              "description": "Keyed by step id, in document order."},
}, ("id", "runbookId", "runbookVersion", "tenantId", "status", "input", "output", "context", "error",
    "createdAt", "startedAt", "completedAt", "pausedDurationMs", "replayOf", "inputHash", "steps"))

_RUNBOOK_SUMMARY_PROPS: dict[str, Schema] = {
    "id": {"type": "string"},
    "version": {"type": "integer", "minimum": 1},
    "name": TEXT_OR_NULL,
    "description": TEXT_OR_NULL,
    "tenantId": {"type": ["string", "null"], "description": "null: shared by every tenant (RUNBOOKS_DIR)"},
    "createdAt": TIME_OR_NULL,
    "shared": {"type": "boolean"},
    "stepCount": {"type": "integer", "minimum": 1},
    "contentSha256": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                      "description": "SHA-256 of the document's canonical JSON (RFC 8785)."},
}

_ID: Schema = {"type": "string", "pattern": f"^{ID_PATTERN.pattern}$"}
_DIGEST: Schema = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_DURATION: Schema = {"type": "integer", "minimum": 1, "maximum": MAX_DURATION_MS}
_DELAY: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_DURATION_MS}
_RETRY_POLICY = obj({
    "maxRetries": {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES},
    "initialDelayMs": _DELAY,
    "backoffMultiplier": {"type": "number", "minimum": MIN_BACKOFF_MULTIPLIER, "maximum": MAX_BACKOFF_MULTIPLIER},
    "maxDelayMs": _DELAY,
    "jitter": {"type": "boolean"},
}, closed=True)
_CONCURRENCY = obj({"key": {"type": "string", "minLength": 1},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_CONCURRENCY}},
                   ("key", "limit"), closed=True,
                   description="Beyond limit at once with the same rendered key (per tenant), executions wait "
                               "queued (a runbook's block) or steps wait pending (a step's), in arrival order.")
_STEP = obj({
    "id": {**_ID, "not": {"enum": sorted(RESERVED_IDS)}},
    "type": {"type": "string", "minLength": 1},
    "name": {"type": "string"},
    "description": {"type": "string"},
    "dependsOn": {"type": "array", "items": {"type": "string"}},
    "when": {"type": "object"},
    "config": {"type": "object"},
    "approvalConfig": {"type": "object"},
    "retryPolicy": _RETRY_POLICY,
    "timeoutMs": _DURATION,
    "continueOnError": {"type": "boolean"},
    "concurrency": _CONCURRENCY,
}, ("id", "type"), closed=True)
_RUNBOOK_DOCUMENT = obj({
    "id": {**_ID, "not": {"enum": list(RESERVED_RUNBOOK_IDS)}},
    "name": {"type": "string"},
    "description": {"type": "string"},
    "timeoutMs": _DURATION,
    "maxConcurrentSteps": {"type": "integer", "minimum": 1, "maximum": MAX_CONCURRENCY},
    "inputSchema": {"type": "object"},
    "requireLegalBasis": {"type": "boolean"},
    "concurrency": _CONCURRENCY,
    "output": ANY,
    "steps": {"type": "array", "minItems": 1, "maxItems": MAX_STEPS, "items": _STEP},
    "version": ANY,
    "tags": ANY,
    "metadata": ANY,
}, ("id", "steps"), closed=True, description=(
    f"A runbook document, as JSON or YAML, at most 1 MiB and {MAX_DEPTH} levels deep. This schema is "
    "its structure; the engine also checks what a schema cannot say (unique step ids, known "
    "dependencies and no cycles, known step types and their config, templates, conditions) and "
    "answers 422 listing every problem."))

SCHEMAS: dict[str, Schema] = {
    "Problem": obj({
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": _PROBLEM_ITEM},
    }, ("type", "title", "status", "detail"), description="RFC 9457 problem details."),
    "Health": obj({"status": {"type": "string", "const": "ok"},
                   "waitingForCapableOwner": {"type": "integer", "minimum": 1,
                                              "description": "executions no process runs that this one "
                                                             "cannot take (a step type it lacks)"}},
                  ("status",)),
    "Queued": obj({"commandId": {"type": "string"}, "status": {"type": "string", "const": "queued"}},
                  ("commandId", "status"),
                  description="The process that runs the execution did not answer within FORWARD_WAIT_MS: "
                              "the command stays queued and is applied first by whoever runs it next."),
    "CommandStatus": obj({
        "commandId": {"type": "string"}, "executionId": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "applied", "refused"]},
        "execution": ref("Execution"),  # applied: the execution as the command left it
        "value": {"description": "applied: what the owner answered instead of a state (an event: whether a step "
                               "took it)"},
        "error": obj({"class": {"type": "string"}, "message": {"type": "string"}}, ("class", "message"),
                     description="refused: the refusal, as the owner would have answered (e.g. Conflict: the "
                                 "execution had ended)")},
        ("commandId", "executionId", "status"),
        description="A command answered 202 {commandId, status: queued}: whoever runs the execution applies it "
                    "(or refuses it, if the execution has ended)."),
    "Text": {"type": "string"},
    "ExecutionEvent": obj({"event": {"type": "string", "const": "execution"},
                           "data": {"type": "string", "description": "the execution, as JSON"},
                           "id": {"type": "string", "description": "its version (for Last-Event-ID)"}},
                          ("event", "data"), description="One server-sent event per committed state."),
    "OpenApi": {"type": "object"},
    "RunbookDocument": _RUNBOOK_DOCUMENT,
    "AnyDocument": {"type": "object", "description": "Any document to check as a runbook (JSON or YAML)."},
    "Registered": obj({"id": {"type": "string"}, "version": {"type": "integer", "minimum": 1}}, ("id", "version")),
    "ValidationReport": obj({"valid": {"type": "boolean"}, "errors": {"type": "array", "items": _PROBLEM_ITEM}},
                            ("valid", "errors")),
    "RunbookSummary": obj(_RUNBOOK_SUMMARY_PROPS, tuple(_RUNBOOK_SUMMARY_PROPS)),
    "Runbook": obj({**_RUNBOOK_SUMMARY_PROPS, "document": {"type": "object"}},
                   (*_RUNBOOK_SUMMARY_PROPS, "document")),
    "RunbookPage": page("RunbookSummary"),
    "StepError": obj({"code": {"type": "string"}, "message": {"type": "string"}, "retryable": {"type": "boolean"},
                      "stepId": TEXT_OR_NULL}, ("code", "message", "retryable")),
    "Approval": obj({"approver": {"type": "string"}, "decision": {"type": "string", "enum": list(DECISIONS)},
                     "comment": TEXT_OR_NULL, "at": TIME,
                     "digest": {**TEXT_OR_NULL, "description": "The digest of what the step showed."}},
                    ("approver", "decision", "comment", "at")),
    "ApprovalShown": obj({"digest": _DIGEST, "shown": obj({
        "message": TEXT_OR_NULL, "input": ANY, "outputs": {"type": "object"},
        "runbook": obj({"id": {"type": "string"}, "version": {"type": "integer"}, "contentSha256": _DIGEST},
                       ("id", "version", "contentSha256"))}, ("message", "input", "outputs", "runbook"))},
        ("digest", "shown"), description="digest: SHA-256 of `shown` in canonical JSON (RFC 8785)."),
    "Delegation": obj({"delegator": {"type": "string"}, "to": {"type": "string"},
                       "reason": {"type": "string"}, "at": TIME}, ("delegator", "to", "reason", "at")),
    "StepState": _STEP_STATE,
    "Execution": _EXECUTION,
    "ExecutionPage": page("Execution"),
    "StartExecution": obj({
        "runbookId": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": NON_BLANK_TEXT_PATTERN},
        "version": {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
        "input": {**ANY, "description": "The execution's input (default {})."},
        "context": obj({"legalBasis": {"type": "string", "maxLength": 10000, "pattern": TEXT_PATTERN},
                        "reason": {"type": "string", "maxLength": 10000, "pattern": TEXT_PATTERN}},
                       description="Free context; tenantId and userId are set from the caller's identity."),
    }, ("runbookId",), closed=True),
    "ControlRequest": obj({"reason": {"type": "string", "maxLength": 10000, "pattern": TEXT_PATTERN}}, closed=True),
    "CancelRequest": obj({"reason": {"type": "string", "minLength": 1, "maxLength": 10000,
                                     "pattern": NON_BLANK_TEXT_PATTERN}}, ("reason",), closed=True),
    "ErasureRequest": obj({"reason": {"type": "string", "minLength": 1, "maxLength": 10000,
                                      "pattern": NON_BLANK_TEXT_PATTERN,
                                      "description": "Why the payload is erased (kept in the ledger)."}},
                          ("reason",), closed=True),
    "ApprovalRequest": obj({"decision": {"type": "string", "enum": list(DECISIONS)},
                            "comment": {"type": ["string", "null"], "maxLength": 10000, "pattern": TEXT_PATTERN},
                            "digest": {**_DIGEST, "description": "The digest the approver was shown; "
                                                                 "a stale one is 409."}},
                           ("decision",), closed=True),
    "CompleteStepRequest": obj({
        "output": {**ANY, "description": "What the step would have output."},
        "justification": {"type": "string", "minLength": 1, "maxLength": 10000, "pattern": NON_BLANK_TEXT_PATTERN},
        "evidence": {**ANY, "description": "What shows the work was done (kept as an evidence item)."},
        "context": obj({"legalBasis": {"type": "string", "maxLength": 10000, "pattern": TEXT_PATTERN}},
                       description="legalBasis: required when the runbook says requireLegalBasis."),
    }, ("output", "justification"), closed=True),
    "ForkRequest": obj({
        "fromStep": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": NON_BLANK_TEXT_PATTERN},
        "input": {**ANY, "description": "The new execution's input (default: the old one's)."},
        "version": {"type": "integer", "minimum": 1, "maximum": MAX_VERSION,
                    "description": "A version of the same runbook (default: the old one's)."},
        "reason": {"type": "string", "maxLength": 10000, "pattern": TEXT_PATTERN},
    }, ("fromStep",), closed=True),
    "SkipStepRequest": obj({
        "justification": {"type": "string", "minLength": 1, "maxLength": 10000, "pattern": NON_BLANK_TEXT_PATTERN},
        "context": obj({"legalBasis": {"type": "string", "maxLength": 10000, "pattern": TEXT_PATTERN}},
                       description="legalBasis: required when the runbook says requireLegalBasis."),
    }, ("justification",), closed=True),
    "DelegationRequest": obj({"to": {"type": "string", "minLength": 1, "maxLength": 200,
                                     "pattern": NON_BLANK_TEXT_PATTERN, "description": "a user or role:NAME"},
                              "reason": {"type": "string", "minLength": 1, "maxLength": 10000,
                                         "pattern": NON_BLANK_TEXT_PATTERN}}, ("to", "reason"), closed=True),
    "EventRequest": obj({
        "type": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": NON_BLANK_TEXT_PATTERN},
        "correlationKey": {"type": "string", "minLength": 1, "maxLength": 1024, "pattern": NON_BLANK_TEXT_PATTERN},
        "payload": ANY,
    }, ("type", "correlationKey"), closed=True),
    "PublishResult": obj({"delivered": {"type": "integer", "minimum": 0}, "retained": {"type": "boolean"},
                          "refusedByFilter": {"type": "integer", "minimum": 0, "description":
                                              "Steps waiting on this type and key whose filter refused the event."}},
                         ("delivered", "retained", "refusedByFilter")),
    "PendingApproval": obj({
        "executionId": {"type": "string"},
        "runbookId": {"type": "string"},
        "runbookVersion": {"type": "integer"},
        "executionStatus": {"type": "string", "enum": list(STATUSES)},
        "stepId": {"type": "string"},
        "message": {**TEXT_OR_NULL, "description": "The step's message, rendered."},
        "approvers": {"type": "array", "items": {"type": "string"}, "description": "Rendered."},
        "minApprovals": {"type": "integer", "minimum": 1},
        "approvals": {"type": "array", "items": ref("Approval"), "description": "Decisions of this round so far."},
        "approvalsNeeded": {"type": "integer", "minimum": 0, "description": "Approvals still needed."},
        "startedAt": TIME_OR_NULL,
        "deadlineAt": TIME_OR_NULL,
        "digest": {**TEXT_OR_NULL, "description": "Of what the step shows now: send it with the decision."},
    }, ("executionId", "runbookId", "runbookVersion", "executionStatus", "stepId", "message", "approvers",
        "minApprovals", "approvals", "approvalsNeeded", "startedAt", "deadlineAt")),
    "PendingApprovalPage": page("PendingApproval"),
    "LogEntry": obj({"seq": {"type": "integer"}, "at": TIME, "level": {"type": "string", "enum": list(LOG_LEVELS)},
                     "message": {"type": "string"}, "stepId": TEXT_OR_NULL, "data": ANY},
                    ("seq", "at", "level", "message", "stepId", "data")),
    "LogPage": page("LogEntry"),
    "Evidence": obj({"id": {"type": "string"}, "stepId": TEXT_OR_NULL, "kind": {"type": "string"},
                     "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "data": ANY, "createdAt": TIME},
                    ("id", "stepId", "kind", "sha256", "data", "createdAt")),
    "EvidencePage": page("Evidence"),
    "AuditEntry": obj({"at": TIME, "actor": {"type": "string"}, "action": {"type": "string"},
                       "stepId": TEXT_OR_NULL, "legalBasis": TEXT_OR_NULL, "reason": TEXT_OR_NULL, "data": ANY,
                       "seq": {"type": ["integer", "null"]}, "prevHash": HASH_OR_NULL, "hash": HASH_OR_NULL,
                       "dataSha256": HASH_OR_NULL, "erased": {"type": "boolean"}},
                      ("at", "actor", "action", "stepId", "legalBasis", "reason", "data", "seq", "prevHash", "hash",
                       "dataSha256", "erased")),
    "AuditPage": page("AuditEntry"),
    "AuditVerdict": obj({"ok": {"type": "boolean"}, "entries": {"type": "integer", "minimum": 0},
                         "seq": {"type": ["integer", "null"]}, "reason": TEXT_OR_NULL, "detail": TEXT_OR_NULL,
                         "notes": {"type": "array", "items": {"type": "string"}}},
                        ("ok", "entries", "seq", "reason", "detail", "notes")),
    "Explanation": obj({
        "stepId": {**TEXT_OR_NULL, "description": "null: the execution itself (its version, what started it)."},
        "status": {"type": "string"},
        "reasons": {"type": "array", "items": {"type": "string"}, "description": "Sentences, oldest cause first."},
        "data": {"type": "object", "description": "The decision record the sentences are made of."},
    }, ("stepId", "status", "reasons", "data")),
    "ExplanationList": obj({"items": {"type": "array", "items": ref("Explanation")}}, ("items",)),
    "Trigger": obj({
        "runbookId": {"type": "string"},
        "triggerId": {"type": "string"},
        "kind": {"type": "string", "enum": ["schedule", "event"]},
        "schedule": {"type": "string", "description": "The cron expression (a schedule)."},
        "timezone": {"type": "string"},
        "eventType": {"type": "string", "description": "The event type (an event rule)."},
        "enabled": {"type": "boolean"},
        "nextRunAt": TIME_OR_NULL,
        "lastRunAt": TIME_OR_NULL,
        "lastExecutionId": TEXT_OR_NULL,
        "shared": {"type": "boolean", "description": "The runbook is shared by every tenant (RUNBOOKS_DIR)."},
    }, ("runbookId", "triggerId", "kind", "enabled", "nextRunAt", "lastRunAt", "lastExecutionId", "shared")),
    "TriggerPage": page("Trigger"),
    "HookResult": obj({"delivered": {"type": "integer", "minimum": 0}, "retained": {"type": "boolean"},
                       "eventId": {"type": "string"}, "duplicate": {"type": "boolean"},
                       "challenge": {"type": "string", "description": "Slack's URL verification, answered."}}),
    "Source": obj({
        "id": {"type": "string"}, "tenant": {"type": "string"},
        "kind": {"type": "string", "enum": ["webhook", "nats-jetstream", "redis-stream"]},
        "counters": obj({"received": {"type": "integer"}, "refused": {"type": "integer"},
                         "duplicate": {"type": "integer"}}, ("received", "refused", "duplicate")),
        "path": {"type": "string", "description": "A webhook's URL path."},
        "signature": {"type": "string", "description": "A webhook's preset, or generic."},
        "status": {"type": "string", "description": "A bus source: running, paused (and why), connecting..."},
    }, ("id", "tenant", "kind", "counters")),
    "SourcePage": page("Source"),
}
