# Two commands on a fresh machine: `make demo` (the main job) and `make test` (every test).
PYTHON ?= python3
VENV := .venv
LS_VENV := .venv-ls
LS_VERSION := 1.23.2
BIN := $(VENV)/bin
# Small models and a busy 2-core machine: one torch thread per process is several times faster here.
export OMP_NUM_THREADS ?= 1

.PHONY: demo test env ls-env browser experiment clean

env: $(VENV)/.installed
ls-env: $(LS_VENV)/.installed

# One resolution for every dependency (label-studio-sdk's opencv pins numpy < 2.3; a second pip call can break it).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# Label Studio pins its own Django, SDK and friends: it lives in its own environment.
$(LS_VENV)/.installed:
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LS_VENV)/bin/python -m pip install -q label-studio==$(LS_VERSION)
	touch $@

# Headless Chromium for the browser test, from Debian's packages (never a browser download).
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && \
	  (apt-get update -q && apt-get install -y -q chromium chromium-driver) >/dev/null; }
	@test -x /usr/bin/chromium || { echo "Chromium is missing: install Debian's chromium package"; exit 1; }

demo: env ls-env
	$(BIN)/hitl demo $(DEMO_ARGS)

test: env ls-env browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

experiment: env
	$(BIN)/hitl experiment --dataset decoy-mnist --seeds 0 1 2 --budget 0.01 --rounds 5 --out runs/experiment

clean:
	rm -rf runs demo-run test-output .pytest_cache
