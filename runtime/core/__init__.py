"""The execution core: every decision about one execution as a pure state machine.

``apply(state, message, now) -> (state, effects)`` takes the state of one execution, one
message (a step's report, a control request, a decision, an event, a deadline) and the
time, and returns the next state with the effects the caller must perform: records to
commit, step attempts to spawn or cancel, event subscriptions, a timer, answers to callers.
Nothing here runs Trio, does I/O or reads a clock, so the rules are tested without an event
loop (``tests/test_core_*.py``). ``runtime.shell.execution`` is the actor shell that drives it.

Step kinds bring their own behaviour through ``runtime.core.kinds.StepKind`` (``begin``,
``resume``, ``message``, ``timeout``, ``cancel``): the core calls them and knows no kind.

The modules, by concern: ``machine`` (``apply``, and the records of a new or crashed
execution), ``control`` (what each message does to the execution as a whole), ``schedule``
(which steps start, the execution's status, the timer), ``transition`` (a transition in
progress: a step's fate, the execution's end, the effects, and the kinds' views of task
runs and parked steps), ``draft`` (the execution being changed and the records to commit),
``effects`` and ``messages`` (what goes out and comes in), ``kinds`` (the seam to the step
kinds), ``plan``, ``state``, ``scope``; ``by_hand`` (a step completed or skipped by a person),
``why`` (each step's decision record) and ``explain`` (those records as sentences).
"""

from runtime.core.effects import (
    Answer,
    AnswerState,
    ArmTimer,
    CancelAttempt,
    Commit,
    Effect,
    Refuse,
    SpawnAttempt,
    Subscribe,
    Unsubscribe,
)
from runtime.core.machine import apply, apply_all, crashed, created
from runtime.core.messages import (
    AttemptRetrying,
    AttemptStarted,
    Begin,
    Cancel,
    Continue,
    DecideApproval,
    DeliverEvent,
    Message,
    Pause,
    Resume,
    RetryStep,
    StepFinished,
    StepProgressed,
    Tick,
)
from runtime.core.plan import Plan, UnknownStepType
from runtime.core.scope import build_scope
from runtime.core.state import ExecutionState

__all__ = [
    "Answer",
    "AnswerState",
    "ArmTimer",
    "AttemptRetrying",
    "AttemptStarted",
    "Begin",
    "Cancel",
    "CancelAttempt",
    "Commit",
    "Continue",
    "DecideApproval",
    "DeliverEvent",
    "Effect",
    "ExecutionState",
    "Message",
    "Pause",
    "Plan",
    "Refuse",
    "Resume",
    "RetryStep",
    "SpawnAttempt",
    "StepFinished",
    "StepProgressed",
    "Subscribe",
    "Tick",
    "UnknownStepType",
    "Unsubscribe",
    "apply",
    "apply_all",
    "build_scope",
    "crashed",
    "created",
]
