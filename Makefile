# flywheel: the two commands are `make demo` (set up and run the loop) and `make test` (set up and test).
# Everything else here is a building block of those two.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export AIRFLOW_HOME := $(CURDIR)
export PATH := $(CURDIR)/$(BIN):$(PATH)
KAFKA_PORT ?= 9092
export KAFKA_PORT
export FLYWHEEL_KAFKA_BOOTSTRAP ?= 127.0.0.1:$(KAFKA_PORT)

.PHONY: help setup demo test test-unit test-integration lint bench fuzz kafka-up kafka-down kafka-status \
        airflow-up airflow-down down clean requirements score

help:
	@echo "make demo        set up, start Kafka and Airflow, run the loop, leave the UI running"
	@echo "make test        set up and run every test (starts and stops its own broker and S3 endpoint)"
	@echo "make down        stop Airflow and Kafka started by make demo"
	@echo "make score MODEL=fraud   run one streaming scorer (a consumer-group member)"
	@echo "make fuzz        fuzz the event decoder: bulk path vs per-record reference (FUZZ_ARGS=\"--records N --seed S\")"
	@echo "make kafka-up / kafka-down, airflow-up / airflow-down, bench, lint, requirements"

# --- setup -------------------------------------------------------------------------------------------
$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip >/dev/null
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/uv pip install -q --compile-bytecode -r requirements.txt
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/uv pip install -q --no-deps -e .
	@touch $@

setup: $(STAMP)
	@scripts/kafka.sh jars

requirements: $(STAMP)
	$(BIN)/uv pip compile requirements.in -o requirements.txt --python-version 3.11

# --- services ----------------------------------------------------------------------------------------
kafka-up: setup
	@scripts/kafka.sh up

kafka-down:
	@scripts/kafka.sh down

kafka-status:
	@scripts/kafka.sh status

airflow-up: setup
	@scripts/airflow.sh up

airflow-down:
	@scripts/airflow.sh down

down: airflow-down kafka-down

# --- the two commands --------------------------------------------------------------------------------
demo: kafka-up
	@$(BIN)/flywheel check --create-topics
	@scripts/airflow.sh up
	@scripts/airflow.sh dags
	@echo "--- the loop: produce -> drain -> train v1 -> score live -> drift -> monitor -> retrain v2 -> hot swap"
	@$(BIN)/flywheel demo $(DEMO_ARGS) --summary-json .local/demo/summary.json
	@echo
	@echo "Airflow UI: http://127.0.0.1:$${AIRFLOW_PORT:-8080} (user admin, password in .local/airflow/admin-password)"
	@echo "            DAG runs, the Models view, drift reports; the scheduled DAGs keep running."
	@echo "Kafka:      $(FLYWHEEL_KAFKA_BOOTSTRAP)   scorer log: .local/demo/scorer.log   summary: .local/demo/summary.json"
	@echo "Stop everything with: make down"

test: setup browser
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# Headless Chromium for the Models view's browser test: Debian's package, installed only if missing.
.PHONY: browser
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test-unit: setup
	$(BIN)/python -m pytest -m "not integration and not e2e" $(PYTEST_ARGS)

test-integration: setup
	$(BIN)/python -m pytest -m "integration" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check include dags plugins tests bench

MODEL ?= fraud
score: setup  ## one scorer process for MODEL (default fraud); add SCORE_ARGS="--exactly-once --compile"
	$(BIN)/flywheel score --spec $(MODEL) $(SCORE_ARGS)

bench: setup
	$(BIN)/python -m bench.run_all

FUZZ_ARGS ?= --records 2000000
fuzz: setup
	$(BIN)/python -m bench.fuzz_decoder $(FUZZ_ARGS)

clean: down
	rm -rf .local logs airflow.db
