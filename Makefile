# Local stack and developer commands. Everything installs itself on first use:
# a virtualenv in .venv, Kafka jars in .cache/kafka (fetched from Maven Central by deploy/kafka).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv kafka-up kafka-down kafka-reset run test unit bench bench-quick reliability \
	reliability-quick lint clean

help:
	@echo "make run         local Kafka + worker + simulated traffic with faults; findings printed"
	@echo "make test        unit + integration tests (starts a local broker unless"
	@echo "                 KAFKA_BOOTSTRAP_SERVERS points at one)"
	@echo "make kafka-up    start the local single-node Kafka (KRaft) on 127.0.0.1:9092"
	@echo "make kafka-down  stop it"
	@echo "make bench       throughput, accuracy and replay-speed benchmarks (full size)"
	@echo "make reliability kill -9 loops, restarts, outages, floods, soak, poison (30+ min;"
	@echo "                 reliability-quick: CI size)"
	@echo "make lint        ruff"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed: set PYTHON=python3.11")'
	test -x $(VENV)/bin/pip || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

kafka-up:
	bash deploy/kafka/kafka.sh up

kafka-down:
	bash deploy/kafka/kafka.sh down

kafka-reset:  # offsets restart at 0 in a new cluster, so saved detector state goes too
	bash deploy/kafka/kafka.sh reset
	rm -rf .cache/state .cache/run

run: $(STAMP)
	bash deploy/local/run.sh

test: $(STAMP)
	bash deploy/local/test.sh

unit: $(STAMP)
	$(PY) -m pytest tests/unit pipeline -q

bench: $(STAMP)
	bash deploy/local/bench.sh

bench-quick: $(STAMP)
	bash deploy/local/bench.sh --quick

reliability: $(STAMP)  # 30+ minutes: kill -9 loops, restarts, outages, floods, soak, poison
	bash deploy/local/reliability.sh

reliability-quick: $(STAMP)  # the same scenarios at CI size (run by .ci/run)
	bash deploy/local/reliability.sh --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline benchmarks tests

clean:
	rm -rf .cache/state .cache/run .pytest_cache
