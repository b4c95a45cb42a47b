"""The step kinds, free of I/O: for each kind, its hooks in the execution core (``begin``,
``resume``, ``message``, ``timeout``, ``cancel``) and the check of its ``config`` at
validation.

What a kind does on the network (an HTTP or gRPC call, a loop's iterations) is its
executor, in ``runtime.io``; ``runtime.shell.step_types`` puts each kind beside its
executor under the type's name.
"""
