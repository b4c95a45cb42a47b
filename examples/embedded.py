"""Embedding the engine in a Trio program: a custom step type, an approval, an event.

Run it with `.venv/bin/python examples/embedded.py` (memory store; pass a store URL such as
`sqlite:///embedded.db` as the first argument to keep state across runs).
"""

from __future__ import annotations

import sys
from typing import Any

import trio

from runtime import StepContext, StepFailed, open_runtime

RUNBOOK = """
id: contain-host
name: Contain a compromised host
steps:
  - id: lookup
    type: cmdb-lookup                 # a custom step type, registered below
    config: {host: "${input.host}"}
  - id: approve
    type: human-approval
    config:
      approvers: [oncall-lead]
      message: "Isolate ${input.host} (owner ${lookup.owner})?"
      timeoutMs: 3600000
  - id: ticket-closed
    type: wait-for-event
    config: {eventType: ticket.closed, correlationKey: "${input.ticket}", timeoutMs: 86400000}
output: "${lookup.owner}"
"""


async def cmdb_lookup(ctx: StepContext) -> Any:
    """A custom executor: ctx.config is already templated."""
    ctx.log.info("looking up host", host=ctx.config["host"])
    if not ctx.config["host"].startswith("srv-"):
        raise StepFailed(f"unknown host {ctx.config['host']}", retryable=False)
    ctx.add_evidence("cmdb-record", {"host": ctx.config["host"], "owner": "payments"})
    return {"owner": "payments", "criticality": "high"}


async def main(store: str) -> None:
    async with open_runtime(store) as rt:
        rt.register_executor("cmdb-lookup", cmdb_lookup)
        await rt.register_runbook(RUNBOOK)
        ex = await rt.start("contain-host", input={"host": "srv-42", "ticket": "T-1"},
                            context={"tenantId": "soc", "userId": "analyst1", "legalBasis": "incident response"})
        async for state in rt.watch(ex.id):  # every committed state, live
            print(f"{state.status.value:<18}", {k: s.status.value for k, s in state.steps.items()})
            if state.status == "awaiting_approval":
                await rt.submit_approval(ex.id, "approve", approver="oncall-lead", decision="approve",
                                         comment="go")
            elif state.steps["ticket-closed"].status == "waiting":
                await rt.publish_event("ticket.closed", "T-1", {"resolution": "fixed"}, tenant_id="soc")
        final = await rt.wait(ex.id)
        print("final:", final.status.value, "output:", final.output)
        print("audit:", [a.action for a in await rt.audit(ex.id)][:6], "...")


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "memory")
