"""A fault-injection harness over real ``runbooks serve`` processes on one PostgreSQL schema.

A round (``tests.chaos.round.run_round``) draws a plan from a seed (``plan``): flows of
requests a client would send (``workload``) and faults (``faults``): kill -9 and restart under
the same or another instance id, SIGSTOP/SIGCONT, a database connection cut, blackholed or
slowed by the TCP proxy each process reaches PostgreSQL through, the LISTEN connection
terminated, a second live process started with the same instance id. Every request and what
the client was told is recorded (``history``); after the faults heal, the final database and
what every process answers are read (``final``) and ``checker`` says what went wrong.

``make chaos SEEDS=N`` runs N seeds (``python -m tests.chaos``); ``make test`` runs a short
round (``test_chaos_short.py``). The same seed draws the same plan.
"""
