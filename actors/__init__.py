"""The actor kernel: bounded mailboxes, ask/reply and supervision on Trio.

It knows nothing about runbooks; ``runtime`` builds the engine's actors on it.
"""

from actors.mailbox import ActorCrashed, ActorGone, Address, Mailbox, Reply, ask, open_mailbox, tell
from actors.supervisor import RestartLimitExceeded, RestartPolicy, Supervisor, open_supervisor

__all__ = [
    "ActorCrashed",
    "ActorGone",
    "Address",
    "Mailbox",
    "Reply",
    "RestartLimitExceeded",
    "RestartPolicy",
    "Supervisor",
    "ask",
    "open_mailbox",
    "open_supervisor",
    "tell",
]
