# The two commands: `make run` serves the API, `make test` checks everything.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# `run` also starts examples/demo_services.py on 127.0.0.1:3001, the stand-in services the
# example runbooks call (unless CALL_SERVICE_BASE_URL points elsewhere).
run: $(STAMP)
	@$(PY) examples/demo_services.py --port 3001 & demo=$$!; \
	trap 'kill $$demo 2>/dev/null' EXIT INT TERM; \
	CALL_SERVICE_BASE_URL=$${CALL_SERVICE_BASE_URL:-http://127.0.0.1:3001} \
	$(PY) -m gateway serve --runbooks-dir examples

lint: $(STAMP)
	$(VENV)/bin/ruff check actors runtime gateway tests benchmarks examples

test: lint
	$(VENV)/bin/pytest

typecheck: $(STAMP)
	$(VENV)/bin/mypy actors runtime

bench: $(STAMP)
	$(PY) -m benchmarks --quick

clean:
	rm -rf $(VENV) *.egg-info
