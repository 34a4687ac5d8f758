# flowhooks: `make run` starts everything, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install services run test unit lint bench chaos screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# RabbitMQ and PostgreSQL must answer; local ones that are stopped get started.
services: install
	$(BIN)/python deploy/local/ensure_services.py

run: services
	$(BIN)/flowhooks run

# Two passes: everything but the `serial` tests on two processes (each test file on one
# process, so a module's system starts once; files handed out longest first, in
# tests/conftest.py's order), then the serial ones alone (they restart the local servers
# or hold timing bounds; tests/conftest.py SERIAL). Both run whatever the other did;
# exit 5 (nothing selected) is not a failure. Each prints its 15 slowest.
# PYTEST_ARGS narrows both passes, e.g. PYTEST_ARGS=tests/e2e.
PYTEST_ARGS ?=
# The tests' rabbitmqctl (a vhost per test): the local one, else the one inside the
# container deploy/local/containers.py starts where RabbitMQ is not installed.
test: export FLOWHOOKS_TEST_RABBITMQCTL ?= $(if $(shell command -v rabbitmqctl),rabbitmqctl,docker exec -i flowhooks-rabbitmq rabbitmqctl)
test: services
	@status=0; \
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not serial" $(PYTEST_ARGS) || \
		{ code=$$?; [ $$code -eq 5 ] || status=$$code; }; \
	$(BIN)/python -m pytest -m serial $(PYTEST_ARGS) || \
		{ code=$$?; [ $$code -eq 5 ] || status=$$code; }; \
	exit $$status

unit: install
	$(BIN)/python -m pytest tests/unit

lint: install
	$(BIN)/ruff check services shared cli harness tests bench
	$(BIN)/mypy services shared cli

# About 4 minutes. wrk drives the closed loops where installed (apt-get install wrk);
# Node-RED is measured beside flowhooks where FLOWHOOKS_BENCH_NODE_RED names its binary
# or node-red is on PATH (npm install --prefix /tmp/nodered node-red). BENCH_ARGS, e.g.
# BENCH_ARGS="--loadgen python --seconds 5".
BENCH_ARGS ?=
bench: services
	$(BIN)/python -m bench $(BENCH_ARGS)

# Its own 3-node RabbitMQ cluster and PostgreSQL pair (private ports, loopback): kills
# broker nodes, the cluster and the primary under load; fails on anything lost or
# stored twice. CHAOS_ARGS=--quick for the short run (under 3 minutes).
CHAOS_ARGS ?=
chaos: install
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

# The debugger page's views, pictured in Debian's chromium into docs/screenshots/
# (tests/e2e/test_debugger_pages.py drives the page with real data and takes them).
screenshots: services
	FLOWHOOKS_UI_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -p no:randomly -q \
		tests/e2e/test_debugger_pages.py -k views

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
