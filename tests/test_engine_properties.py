"""Property tests of the scheduler: for random DAGs, dependencies, no repeats, the limit, the end."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import Settings, open_runtime


@st.composite
def dags(draw: st.DrawFn) -> dict[str, Any]:
    size = draw(st.integers(1, 12))
    steps = []
    for index in range(size):
        step: dict[str, Any] = {"id": f"s{index}", "type": "timed",
                                "config": {"sleep": draw(st.sampled_from([0, 0.5, 1, 3]))}}
        if index and draw(st.booleans()):
            step["dependsOn"] = draw(st.lists(st.sampled_from([f"s{i}" for i in range(index)]), unique=True))
        elif draw(st.booleans()):
            step["dependsOn"] = []
        steps.append(step)
    return {"id": "dag", "maxConcurrentSteps": draw(st.integers(1, 4)), "steps": steps}


def effective_deps(doc: dict[str, Any]) -> dict[str, list[str]]:
    deps = {}
    for index, step in enumerate(doc["steps"]):
        default = [doc["steps"][index - 1]["id"]] if index else []
        deps[step["id"]] = step.get("dependsOn", default)
    return deps


@settings(max_examples=60, deadline=None)
@given(doc=dags())
def test_random_dags_respect_dependencies_and_the_concurrency_limit(doc: dict[str, Any]) -> None:
    spans: dict[str, list[tuple[float, float]]] = {}
    running = [0, 0]  # now, max

    async def timed(ctx: Any) -> None:
        start = trio.current_time()
        running[0] += 1
        running[1] = max(running[1], running[0])
        await trio.sleep(ctx.config["sleep"])
        running[0] -= 1
        spans.setdefault(ctx.step_id, []).append((start, trio.current_time()))

    async def main() -> str:
        async with open_runtime("memory", settings=Settings(default_max_retries=0)) as rt:
            rt.register_executor("timed", timed)
            await rt.register_runbook(doc)
            execution = await rt.start("dag")
            with trio.fail_after(10_000):
                final = await rt.wait(execution.id)
            return final.status.value

    status = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert status == "completed"  # the execution always ends
    assert sorted(spans) == sorted(s["id"] for s in doc["steps"])
    assert all(len(runs) == 1 for runs in spans.values())  # none runs twice
    assert running[1] <= doc["maxConcurrentSteps"]
    for step, deps in effective_deps(doc).items():
        for dep in deps:
            assert spans[step][0][0] >= spans[dep][0][1]  # after each dependency ended
