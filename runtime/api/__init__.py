"""The embedded API: ``open_runtime`` assembles the parts, ``Runtime`` is what a program calls.

- ``assembly``: ``open_runtime``; every part built and wired (each through its own host),
  recovery at open, the hand-over at close.
- ``runtime``, ``reading``, ``control``: ``Runtime``, the public methods, grouped by concern
  over the wired parts (``parts``); ``arguments`` checks what a caller hands them.
- ``starting``: the one start of an execution (the API's, a child's, a trigger's).
- ``routing``: where a request for an execution is applied, here or on its owner.
- ``access``: how the runtime reads its store and commits outside the actors.
"""
