# flowhooks: `make run` starts everything, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install services run test unit lint bench chaos clean

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

test: services
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit

lint: install
	$(BIN)/ruff check services shared tests bench
	$(BIN)/mypy services shared

bench: services
	$(BIN)/python -m bench

# Its own 3-node RabbitMQ cluster and PostgreSQL pair (private ports, loopback): kills
# broker nodes, the cluster and the primary under load; fails on anything lost or
# stored twice. CHAOS_ARGS=--quick for the short run (under 3 minutes).
CHAOS_ARGS ?=
chaos: install
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
