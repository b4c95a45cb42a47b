from typing import Any
import trio
from runtime import Runtime

async def test_wait_step_timeout(rt: Runtime, autojump_clock: Any) -> None:
    doc = {"id": "x", "steps": [{"id": "w", "type": "wait-for-event", "timeoutMs": 1000, "config": {"eventType": "e", "correlationKey": "k"}}]}
    await rt.register_runbook(doc)
    final = await rt.wait((await rt.start("x")).id)
    print("WAIT", final.steps["w"].error, trio.current_time())
