# Touchline: the two commands are `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DURATION ?=
SPEED ?= 1
SEED ?= 7
BENCH_EVENTS ?= 1000000
BENCH_QUIX ?=
QUIX_VENV := .venv-quix
QUIX_STAMP := $(QUIX_VENV)/.installed
SOAK_DAYS ?= 4
SOAK_RATE ?= 4000
SOAK_SPEED ?= 500
SOAK_JOURNEY_WINDOWS ?= short
SOAK_JOURNEY_BUILDERS ?= 0

.PHONY: run test unit integration lint typecheck generate bench soak clean install system-deps

$(STAMP): pyproject.toml
	@command -v java >/dev/null || { echo "Java (JDK 17+) is needed for the local Kafka broker: apt-get install openjdk-17-jdk-headless"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is needed to resolve Kafka: apt-get install maven"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## make run [DURATION=<s>] [SPEED=<x>] [FRESH=1]: broker + worker + simulator with a live view (tools/run.py)
run: $(STAMP)
	$(BIN)/python -m tools.run --speed $(SPEED) --seed $(SEED) $(if $(DURATION),--duration $(DURATION)) $(if $(FRESH),--fresh)

## make test: lint, types, generated-file drift, unit and integration tests against a real broker
## (three test processes on two cores: the integration tests wait on paced simulators; tests/conftest.py)
test: $(STAMP) system-deps lint typecheck
	$(BIN)/touchline generate --check
	@# the tests start hundreds of Python processes (workers, CLI commands): compiled once here, not
	@# by each of them when PYTHONDONTWRITEBYTECODE is set or the sources are newer than their cache
	@# (importing the worker: 1.33 -> 1.15 CPU s)
	$(BIN)/python -m compileall -q pipeline tools > /dev/null
	$(BIN)/pytest -q -n 3 --dist loadfile --no-loadscope-reorder --durations=20 tests/unit tests/integration

## Prometheus and Alertmanager (Debian packages) for the alerting tests; skipped with a message when not root
system-deps:
	@bash deploy/install-system-deps.sh

unit: $(STAMP)
	$(BIN)/pytest -q -n 2 tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q -n 3 --dist loadfile --no-loadscope-reorder -m integration tests

lint: $(STAMP)
	$(BIN)/ruff check pipeline tools benchmarks tests
	$(BIN)/ruff format --check pipeline tools benchmarks tests

typecheck: $(STAMP)
	$(BIN)/mypy

generate: $(STAMP)
	$(BIN)/touchline generate

## make bench [BENCH_EVENTS=N] [BENCH_QUIX=1]: throughput, latency, µs-per-step profile (benchmarks/bench.py);
## the quix-streams contender is measured whenever .venv-quix exists, BENCH_QUIX=1 makes it first
bench: $(STAMP) $(if $(BENCH_QUIX),$(QUIX_STAMP))
	$(BIN)/python -m benchmarks.bench --events $(BENCH_EVENTS)

## make bench-quix-env: quix-streams for make bench's contender, in a venv of its own (it needs pydantic < 2.14)
.PHONY: bench-quix-env
bench-quix-env: $(QUIX_STAMP)

$(QUIX_STAMP):
	$(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/pip install --quiet --upgrade pip
	$(QUIX_VENV)/bin/pip install --quiet quixstreams==3.28.1
	@touch $@

## make soak [SOAK_DAYS=4] [SOAK_RATE=4000] [SOAK_SPEED=500] [SOAK_JOURNEY_WINDOWS=short|day|default] [SOAK_JOURNEY_BUILDERS=N]: simulated days through the workers; RSS, state, stalls, stop/restart
soak: $(STAMP)
	$(BIN)/python -m benchmarks.soak --days $(SOAK_DAYS) --rate $(SOAK_RATE) --speed $(SOAK_SPEED) --journey-windows $(SOAK_JOURNEY_WINDOWS) --journey-builders $(SOAK_JOURNEY_BUILDERS)

clean:
	-$(BIN)/python -m tools.broker stop 2>/dev/null
	rm -rf .touchline
