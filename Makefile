# The two commands: `make run` serves the API, `make test` checks everything.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench torture chaos clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# `run` serves the API and the console with the runbooks of examples/, and (unless
# CALL_SERVICE_BASE_URL is set) starts examples/demo_services.py on a free port beside it,
# the stand-in services the example runbooks call. SIGINT/SIGTERM stop both.
run: $(STAMP)
	$(PY) examples/serve_with_demo.py --runbooks-dir examples

# `lint` also checks the layering (.importlinter): gateway -> runtime -> actors, and inside
# runtime/ each folder imports only the ones below it.
lint: $(STAMP)
	$(VENV)/bin/ruff check actors runtime gateway tests benchmarks examples
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest

# `torture` runs the kill -9 test (tests/test_torture.py) for ROUNDS rounds per store
# (default 20; `make test` runs 3 on SQLite and 2 on PostgreSQL).
ROUNDS ?= 20
torture: $(STAMP)
	RUNBOOKS_TORTURE_ROUNDS=$(ROUNDS) $(VENV)/bin/pytest tests/test_torture.py -s

# `chaos` runs the fault-injection rounds of tests/chaos/ (three serve processes on one PostgreSQL
# schema, faults drawn from each seed) for SEEDS seeds from FIRST, or until BUDGET_S seconds
# have passed (0: no limit); FAULTS=twin,stall narrows the fault kinds drawn. `make test` runs one
# short round.
SEEDS ?= 20
FIRST ?= 1
BUDGET_S ?= 0
FAULTS ?= all
chaos: $(STAMP)
	$(PY) -m tests.chaos --seeds $(SEEDS) --first $(FIRST) --budget-s $(BUDGET_S) \
		$(if $(filter all,$(FAULTS)),,--faults $(FAULTS))

typecheck: $(STAMP)
	$(VENV)/bin/mypy actors runtime

bench: $(STAMP)
	$(PY) -m benchmarks --quick

clean:
	rm -rf $(VENV) *.egg-info
