"""The step kinds, free of I/O: for each kind, its hooks in the execution core (``begin``,
``resume``, ``message``, ``timeout``, ``cancel``) and its ``SPEC`` (``runtime.kinds.spec``):
the check of its ``config`` and what validation must know of it.

What a kind does on the network (an HTTP or gRPC call, a loop's iterations) is its
executor, in ``runtime.io``; ``runtime.shell.step_types`` puts each spec beside its
executor under the type's name.
"""
