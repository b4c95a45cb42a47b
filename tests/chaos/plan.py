"""What a round will do, drawn from its seed alone: the flows of the workload and the faults.

Every choice is made here with one ``random.Random(seed)``, before anything runs, so the same
seed gives the same plan (``describe`` prints it). What the processes then answer depends on
timing; the plan does not.

Processes are named by slot (0, 1, 2); a flow step says which slot it is sent to. A flow is
the life of one execution as a client drives it (start, pause/resume, approve, publish, cancel,
retry, replay); a fault hits one slot at a time offset and lasts ``for_s``.
"""

from __future__ import annotations

import random
from typing import Literal

import attrs

SLOTS = 3
FlowKind = Literal["gate", "events", "parent", "flaky", "slow"]
FaultKind = Literal["kill_same", "kill_new", "stall", "stall_owner", "cut", "hold_one", "delay", "listener", "twin"]
FLOW_KINDS: tuple[FlowKind, ...] = ("gate", "events", "parent", "flaky", "slow")
FLOW_WEIGHTS = (2, 3, 2, 1, 1)  # events back to back are where several processes lose most
FAULT_KINDS: tuple[FaultKind, ...] = ("kill_same", "kill_new", "stall", "stall_owner", "cut", "hold_one", "delay",
                                      "listener", "twin")


@attrs.frozen
class Size:
    """How much a round does: flows over ``span_s`` seconds, faults over the same span; the flows
    then have ``tail_s`` more to drive their executions to their ends."""

    flows: int
    faults: int
    span_s: float
    tail_s: float

    @classmethod
    def short(cls) -> Size:
        return cls(flows=10, faults=3, span_s=8.0, tail_s=15.0)

    @classmethod
    def long(cls) -> Size:
        return cls(flows=30, faults=8, span_s=25.0, tail_s=25.0)


@attrs.frozen
class Flow:
    index: int
    kind: FlowKind
    at_s: float  # when it starts
    slots: tuple[int, ...]  # the slot each of its requests goes to, in order (cycled)
    idempotent: bool  # the start carries an Idempotency-Key (sent twice, to two slots)
    pause: bool  # gate: pause then resume before the approval
    wait_first: bool  # events: publish only once the first wait is in place (else at once)
    overlap: bool  # events: the second publish is sent before the first one's answer came
    delay_s: float  # parent: how long after the child started the parent is cancelled
    replay: bool  # flaky: replay it once it completed

    def slot(self, n: int) -> int:
        return self.slots[n % len(self.slots)]

    def describe(self) -> str:
        extras = [name for name, on in (("idem", self.idempotent), ("pause", self.pause and self.kind == "gate"),
                                        ("wait-first", self.wait_first and self.kind == "events"),
                                        ("overlap", self.overlap and self.kind == "events"),
                                        ("replay", self.replay and self.kind == "flaky")) if on]
        if self.kind == "parent":
            extras.append(f"cancel-after={self.delay_s:.1f}s")
        return (f"flow {self.index:2d} at {self.at_s:5.2f}s {self.kind:6s} slots={''.join(map(str, self.slots))} "
                f"{' '.join(extras)}").rstrip()


@attrs.frozen
class Fault:
    kind: FaultKind
    slot: int
    at_s: float
    for_s: float  # how long it lasts (kill: how long the process stays dead)
    delay_ms: int = 0  # delay: per chunk

    def describe(self) -> str:
        extra = f" delay={self.delay_ms}ms" if self.kind == "delay" else ""
        return f"fault at {self.at_s:5.2f}s {self.kind:9s} slot {self.slot} for {self.for_s:.1f}s{extra}"


@attrs.frozen
class Plan:
    seed: int
    flows: tuple[Flow, ...]
    faults: tuple[Fault, ...]

    def describe(self) -> str:
        lines = [f"seed {self.seed}: {len(self.flows)} flows, {len(self.faults)} faults"]
        events = sorted([(f.at_s, f.describe()) for f in self.flows] + [(f.at_s, f.describe()) for f in self.faults])
        return "\n".join(lines + [f"  {text}" for _, text in events])


def draw(seed: int, size: Size, ttl_s: float, kinds: tuple[FaultKind, ...] = FAULT_KINDS) -> Plan:
    rng = random.Random(seed)
    flows = tuple(
        Flow(index=n, kind=rng.choices(FLOW_KINDS, FLOW_WEIGHTS)[0], at_s=round(rng.uniform(0, size.span_s), 2),
             slots=tuple(rng.randrange(SLOTS) for _ in range(6)), idempotent=rng.random() < 0.5,
             pause=rng.random() < 0.5, wait_first=rng.random() < 0.6, overlap=rng.random() < 0.4,
             delay_s=round(rng.uniform(0, 1.5), 2), replay=rng.random() < 0.5)
        for n in range(size.flows))
    faults: list[Fault] = []
    at = rng.uniform(0.5, 2.0)
    step = size.span_s / max(size.faults, 1)
    for _ in range(size.faults):
        kind = rng.choice(kinds)
        lasting = rng.choice((0.5 * ttl_s, 1.5 * ttl_s, 2.5 * ttl_s))  # within the lease, or past it
        faults.append(Fault(kind, rng.randrange(SLOTS), round(at, 2), round(lasting, 2),
                            delay_ms=rng.choice((50, 200, 600))))
        at += rng.uniform(0.6, 1.2) * step
    return Plan(seed, flows, tuple(faults))
