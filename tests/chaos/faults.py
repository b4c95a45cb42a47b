"""The nemesis: applies a plan's faults to the cluster at their times, and heals each after it.

Faults on one slot take turns (the next waits for the previous one to heal); each is recorded
as an ``Outage`` from the moment it hits to the moment the slot is whole again (for a kill: its
process started again and ready). The choice of the connection to hold back is drawn from the
fault's own ``random.Random``, seeded from the round's seed.
"""

from __future__ import annotations

import random
import signal

import attrs
import trio

from tests.chaos.cluster import Cluster, Slot
from tests.chaos.plan import Fault, Plan
from tests.cluster_nodes import ready

TWIN_STALL_S = 3.0  # the first of two processes with one id stays stalled at most this long


async def nemesis(cluster: Cluster, plan: Plan, log: list[str]) -> None:
    locks = {slot.index: trio.Lock() for slot in cluster.slots}
    async with trio.open_nursery() as nursery:
        for n, fault in enumerate(plan.faults):
            nursery.start_soon(_one, cluster, fault, locks[fault.slot], random.Random(plan.seed * 1000 + n), log)


async def _one(cluster: Cluster, fault: Fault, lock: trio.Lock, rng: random.Random, log: list[str]) -> None:
    await trio.sleep_until(cluster.origin + fault.at_s)
    if fault.kind == "stall_owner":  # the process running the newest unfinished child, if any
        owner = await trio.to_thread.run_sync(cluster.owner_of_newest_child)
        fault = attrs.evolve(fault, slot=next((s.index for s in cluster.slots if s.instance == owner), fault.slot))
    async with lock:
        slot = cluster.slots[fault.slot]
        start = cluster.now()
        log.append(f"{start:6.2f}s {fault.kind} on {slot.instance}")
        try:
            await APPLY[fault.kind](cluster, slot, fault, rng)
        except (AssertionError, trio.TooSlowError) as exc:  # a process did not start again
            cluster.history.exits.append(f"{fault.kind} on slot {slot.index}: {exc}"[-2000:])
        cluster.outage(fault.kind, slot, start)
        log.append(f"{cluster.now():6.2f}s healed {fault.kind} on {slot.instance}")


async def _kill(cluster: Cluster, slot: Slot, fault: Fault, rng: random.Random) -> None:
    node = slot.node
    if node is None:
        return
    cluster.expect_end(node)
    node.kill()
    await node.process.wait()
    await trio.sleep(fault.for_s)
    if fault.kind == "kill_new":
        slot.generation += 1
        await cluster.launch(slot, f"p{slot.index}-g{slot.generation}")
    else:
        await cluster.launch(slot, node.instance)


async def _stall(cluster: Cluster, slot: Slot, fault: Fault, rng: random.Random) -> None:
    if slot.node is None:
        return
    slot.node.process.send_signal(signal.SIGSTOP)
    slot.stalled = True
    try:
        await trio.sleep(fault.for_s)
    finally:
        slot.node.process.send_signal(signal.SIGCONT)
        slot.stalled = False


async def _cut(cluster: Cluster, slot: Slot, fault: Fault, rng: random.Random) -> None:
    slot.proxy.refuse()
    try:
        await trio.sleep(fault.for_s)
    finally:
        slot.proxy.forward()


async def _hold_one(cluster: Cluster, slot: Slot, fault: Fault, rng: random.Random) -> None:
    slot.proxy.hold_one(rng)
    try:
        await trio.sleep(fault.for_s)
    finally:
        slot.proxy.release()


async def _delay(cluster: Cluster, slot: Slot, fault: Fault, rng: random.Random) -> None:
    slot.proxy.delay_s = fault.delay_ms / 1000
    try:
        await trio.sleep(fault.for_s)
    finally:
        slot.proxy.release()


async def _listener(cluster: Cluster, slot: Slot, fault: Fault, rng: random.Random) -> None:
    await trio.to_thread.run_sync(cluster.terminate_listener, slot)
    await trio.sleep(fault.for_s)  # the time it may take to notice: counted as the outage


async def _twin(cluster: Cluster, slot: Slot, fault: Fault, rng: random.Random) -> None:
    """A second live process with the same instance id: the first one stalls, the second starts with
    its id, the first wakes up and both live for ``for_s``; then the first stops gracefully."""
    old = slot.node
    if old is None:
        return
    old.process.send_signal(signal.SIGSTOP)
    try:  # the first may be stalled in a transaction the second's start waits for: not for long
        with trio.move_on_after(TWIN_STALL_S):
            await cluster.launch(slot, old.instance)
    finally:
        old.process.send_signal(signal.SIGCONT)
    if slot.node is not None and slot.node is not old:
        await ready(slot.node)
    await trio.sleep(fault.for_s)
    cluster.expect_end(old)
    old.stop()
    with trio.move_on_after(15):
        await old.process.wait()
    if old.process.returncode is None:
        old.kill()
        await old.process.wait()


APPLY = {"kill_same": _kill, "kill_new": _kill, "stall": _stall, "stall_owner": _stall, "cut": _cut, "hold_one": _hold_one,
         "delay": _delay, "listener": _listener, "twin": _twin}
