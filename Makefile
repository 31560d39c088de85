# Two commands on a fresh machine: `make demo` (the main job) and `make test` (every test).
# `make check` is the fast loop (lint, format, types, the tests that need no server); `make lock` refreshes the
# constraints files that pin every version `make test` was run with (docs/development.md).
PYTHON ?= python3
VENV := .venv
LS_VENV := .venv-ls
LS_VERSION := 1.23.2
MOTO_VENV := .venv-moto
BIN := $(VENV)/bin
# Small models and a busy 2-core machine: one torch thread per process is several times faster here.
export OMP_NUM_THREADS ?= 1

.PHONY: demo test check lint env ls-env moto-env browser experiment lock clean

env: $(VENV)/.installed
ls-env: $(LS_VENV)/.installed
moto-env: $(MOTO_VENV)/.installed

# One resolution for every dependency (label-studio-sdk's opencv pins numpy < 2.3; a second pip call can break it).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

# Label Studio pins its own Django, SDK and friends: it lives in its own environment.
$(LS_VENV)/.installed: constraints-ls.txt
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LS_VENV)/bin/python -m pip install -q -c constraints-ls.txt label-studio==$(LS_VERSION)
	touch $@

# moto's standalone S3 server, for the cloud storage tests (tests/s3.py): its own environment, since moto needs
# python-dateutil < 3 and ours pins 4.
$(MOTO_VENV)/.installed: constraints-moto.txt
	test -x $(MOTO_VENV)/bin/python || $(PYTHON) -m venv $(MOTO_VENV)
	$(MOTO_VENV)/bin/python -m pip install -q --upgrade pip
	$(MOTO_VENV)/bin/python -m pip install -q -c constraints-moto.txt 'moto[server]>=5'
	touch $@

# Headless Chromium for the browser test, from Debian's packages (never a browser download).
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && \
	  (apt-get update -q && apt-get install -y -q chromium chromium-driver) >/dev/null; }
	@test -x /usr/bin/chromium || { echo "Chromium is missing: install Debian's chromium package"; exit 1; }

demo: env ls-env
	$(BIN)/hitl demo $(DEMO_ARGS)

test: env ls-env moto-env browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Lint, format and types first (they fail in seconds), then every test that needs no server and no browser.
lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: lint ls-env  # test_compose reads the installed Label Studio
	$(BIN)/python -m pytest -q -m "not labelstudio and not browser and not slow" $(PYTEST_ARGS)

# Resolve both environments afresh (newest versions the ranges in pyproject.toml allow) and pin what resolved.
# Run `make test` afterwards: the files record what the suite passed with.
LOCK_TMP := .lock-tmp
lock:
	rm -rf $(LOCK_TMP) && $(PYTHON) -m venv $(LOCK_TMP)/app && $(PYTHON) -m venv $(LOCK_TMP)/ls && \
	  $(PYTHON) -m venv $(LOCK_TMP)/moto
	$(LOCK_TMP)/app/bin/python -m pip install -q --upgrade pip
	$(LOCK_TMP)/app/bin/python -m pip install -q -e '.[test]'
	{ echo "# make lock: every version .venv was tested with (pip install -c constraints.txt -e '.[test]')"; \
	  $(LOCK_TMP)/app/bin/python -m pip freeze --exclude-editable; } > constraints.txt
	$(LOCK_TMP)/ls/bin/python -m pip install -q --upgrade pip
	$(LOCK_TMP)/ls/bin/python -m pip install -q label-studio==$(LS_VERSION)
	{ echo "# make lock: every version .venv-ls was tested with (label-studio==$(LS_VERSION))"; \
	  $(LOCK_TMP)/ls/bin/python -m pip freeze; } > constraints-ls.txt
	$(LOCK_TMP)/moto/bin/python -m pip install -q --upgrade pip
	$(LOCK_TMP)/moto/bin/python -m pip install -q 'moto[server]>=5'
	{ echo "# make lock: every version .venv-moto was tested with (moto[server]; its own environment: it needs python-dateutil < 3)"; \
	  $(LOCK_TMP)/moto/bin/python -m pip freeze; } > constraints-moto.txt
	rm -rf $(LOCK_TMP)

experiment: env
	$(BIN)/hitl experiment --dataset decoy-mnist --seeds 0 1 2 --budget 0.01 --rounds 5 --out runs/experiment

clean:
	rm -rf runs demo-run test-output .pytest_cache .lock-tmp .mypy_cache .ruff_cache
