"""The checker bites: fed a made-up history and final state with one fault each, it says which."""

from __future__ import annotations

from typing import Any

from tests.chaos.checker import Violation, check
from tests.chaos.final import (
    AuditRow,
    CommandRead,
    CommandRow,
    ExecutionRow,
    Read,
    Snapshot,
    WaitRow,
)
from tests.chaos.history import History, Outage, Request
from tests.chaos.plan import Size, draw
from tests.chaos.service import Call

EVENTS_DONE = {"a": {"status": "succeeded", "output": {"payload": {"uid": "e1"}}},
               "b": {"status": "succeeded", "output": {"payload": {"uid": "e2"}}}}


def publish(uid: str, delivered: int, retained: bool = False, status: int | None = 202) -> Request:
    return Request("publish", "p1", "x1", uid, 1.0, 1.1, status,
                   {"delivered": delivered, "retained": retained} if status == 202 else None)


def healthy() -> tuple[History, Snapshot]:
    """Two events delivered, a pause and an approval applied once, all read alike everywhere."""
    history = History([
        Request("start", "p0", "x1", "t0", 0.0, 0.1, 201, {"id": "x1"}),
        publish("e1", 1), publish("e2", 1),
        Request("start", "p0", "g1", "t1", 0.0, 0.1, 201, {"id": "g1"}, idempotency_key="k"),
        Request("start", "p1", "g1", "t2", 0.2, 0.3, 200, {"id": "g1"}, idempotency_key="k"),
        Request("pause", "p2", "g1", "t3", 0.5, 0.6, 200, {"status": "paused"}),
        Request("approve", "p1", "g1", "t4", 0.7, 0.8, 202, {"commandId": "c1", "status": "queued"},
                step="approve"),
    ])
    final = Snapshot(
        executions={"x1": ExecutionRow("x1", "completed", "events", EVENTS_DONE),
                    "g1": ExecutionRow("g1", "completed", "gate", {
                        "approve": {"status": "succeeded", "approvals": [{"approver": "boss", "comment": "t4"}]}})},
        audit=[AuditRow("g1", "ops", "execution.pause", None, "t3")],
        commands=[CommandRow("c1", "g1", "DecideApproval", 1.5, {"ok": True, "execution": {"id": "g1"}})],
        reads=[Read(p, x, "completed") for p in ("p0", "p1", "p2") for x in ("x1", "g1")],
        command_reads=[CommandRead(p, "c1", "applied") for p in ("p0", "p1", "p2")],
        calls=[Call("/first", "g1:first", 0.2, 0.3, 200)])
    return history, final


def rules(violations: list[Violation]) -> list[str]:
    return [v.rule for v in violations]


def test_a_healthy_round_has_no_violation() -> None:
    assert check(*healthy()) == []


def test_a_lost_event_is_reported() -> None:
    history, final = healthy()
    steps: dict[str, Any] = {**EVENTS_DONE, "b": {"status": "waiting"}}
    final.executions["x1"] = ExecutionRow("x1", "running", "events", steps)
    found = check(history, final)
    assert rules(found) == ["events", "ended", "reads", "reads", "reads"]
    assert "event e2 lost: taken by 0 steps, still retained 0" in str(found[0])
    assert "publish x1 [e2] on p1" in str(found[0]) and "202 {'delivered': 1, 'retained': False}" in str(found[0])


def test_a_retained_event_still_kept_is_accounted_for_but_not_one_taken_twice() -> None:
    history, final = healthy()
    history.requests[2] = publish("e2", 0, retained=True)
    assert check(history, final) == []
    final.retained.append({"uid": "e2"})
    assert rules(check(history, final)) == ["events"]  # taken by b and still retained


def test_a_control_applied_twice_is_reported() -> None:
    history, final = healthy()
    final.audit.append(AuditRow("g1", "ops", "execution.pause", None, "t3"))
    found = check(history, final)
    assert rules(found) == ["controls"]
    assert "pause g1 [t3] on p2 at 0.50s: 200" in str(found[0]) and "applied 2 times" in str(found[0])


def test_a_control_told_2xx_but_never_applied_and_a_refused_one_applied_are_reported() -> None:
    history, final = healthy()
    final.audit.clear()
    history.requests.append(Request("cancel", "p0", "g1", "t9", 2.0, 2.1, 409, {"detail": "completed"}))
    final.audit.append(AuditRow("g1", "ops", "execution.cancelled", None, "t9"))
    assert [str(v).split("]")[0] for v in check(history, final)] == ["[controls", "[controls"]


def test_a_queued_command_never_applied_or_applied_late_is_reported() -> None:
    history, final = healthy()
    final.commands[0] = CommandRow("c1", "g1", "DecideApproval", None, None)
    found = rules(check(history, final))
    assert "queued" in found and "leftovers" in found
    final.commands[0] = CommandRow("c1", "g1", "DecideApproval", 60.0, {"ok": True, "execution": {"id": "g1"}})
    assert rules(check(history, final)) == ["queued"]


def test_a_process_that_still_says_queued_at_the_end_is_reported() -> None:
    history, final = healthy()
    final.command_reads[2] = CommandRead("p2", "c1", "queued")
    assert [str(v) for v in check(history, final)] == [
        "[queued] p2 answers queued for command c1 after the end (GET .../commands/{id})"]


def test_a_stale_read_is_reported() -> None:
    history, final = healthy()
    final.reads[3] = Read("p1", "g1", "awaiting_approval")
    found = check(history, final)
    assert [str(v) for v in found] == [
        "[reads] p1 answers awaiting_approval for g1, the database says completed"]


def test_a_second_call_with_one_key_is_explained_only_by_a_fault_in_between() -> None:
    history, final = healthy()
    final.calls.append(Call("/first", "g1:first", 3.0, 3.1, 200))
    assert rules(check(history, final)) == ["calls"]
    history.outages.append(Outage("kill_same", "p0", 1.0, 2.0))
    assert check(history, final) == []


def test_leftover_rows_unfinished_executions_and_two_executions_for_one_key_are_reported() -> None:
    history, final = healthy()
    final.waits.append(WaitRow("x1", "b", "completed"))
    final.executions["g2"] = ExecutionRow("g2", "awaiting_approval", "gate")
    history.requests.append(Request("start", "p2", "g2", "t5", 0.2, 0.3, 200, {"id": "g2"}, idempotency_key="k"))
    assert sorted(rules(check(history, final))) == ["ended", "leftovers", "starts"]


def test_a_5xx_is_allowed_only_as_a_503_during_an_outage_of_that_process() -> None:
    history, final = healthy()
    history.requests.append(Request("publish", "p2", "x1", "e3", 4.0, 4.1, 503, {"detail": "store down"}))
    history.requests.append(Request("pause", "p2", "g1", "t6", 4.0, 4.1, 500, {"detail": "boom"}))
    assert rules(check(history, final)) == ["errors", "errors"]
    history.outages.append(Outage("cut", "p2", 3.0, 3.5))
    assert [str(v) for v in check(history, final)] == ["[errors] pause g1 [t6] on p2 at 4.00s: 500 {'detail': 'boom'}"]


def test_a_process_that_ended_by_itself_is_reported() -> None:
    history, final = healthy()
    history.exits.append("p1 (pid 7) exited with 1; its log ends: ...CommandQueued")
    assert rules(check(history, final)) == ["exits"]


def test_the_same_seed_draws_the_same_plan_and_another_seed_another() -> None:
    assert draw(7, Size.short(), 1.5) == draw(7, Size.short(), 1.5)
    assert draw(7, Size.short(), 1.5).describe() == draw(7, Size.short(), 1.5).describe()
    assert draw(8, Size.short(), 1.5) != draw(7, Size.short(), 1.5)


def test_a_queued_command_counts_as_applied_only_if_its_outcome_was_a_success() -> None:
    history, final = healthy()
    final.commands[0] = CommandRow("c1", "g1", "DecideApproval", 1.5, {"ok": False, "error": {"class": "Conflict"}})
    found = check(history, final)
    assert rules(found) == ["controls"] and "202 {'commandId': 'c1', 'status': 'queued'}" in str(found[0])
    final.executions["g1"].steps["approve"]["approvals"].clear()  # refused, and not applied: fine
    assert check(history, final) == []


def test_a_start_told_once_that_made_two_executions_is_reported_and_a_lost_keyless_start_is_a_stray() -> None:
    from tests.chaos.workload import strays
    history, final = healthy()
    history.requests.append(Request("start", "p0", None, "t9", 2.0, 6.0, None, error="ReadTimeout"))
    final.executions["s1"] = ExecutionRow("s1", "running", "events", tag="t9")
    assert [e.id for e in strays(history, final)] == ["s1"]  # the harness cancels it before the checker looks
    final.executions["s1"] = ExecutionRow("s1", "cancelled", "events", tag="t9")
    assert check(history, final) == []
    final.executions["x1"] = ExecutionRow("x1", "completed", "events", EVENTS_DONE, tag="t0")
    final.executions["x2"] = ExecutionRow("x2", "completed", "events", tag="t0")
    assert rules(check(history, final)) == ["starts"]
    final.executions["x2"] = ExecutionRow("x2", "completed", "events", tag="t0", replay_of="x1")
    assert check(history, final) == []
