# Two commands do everything on a fresh machine: `make demo` (the main job) and `make test`.
# Every target sets up what it needs: a venv from the pinned requirements.txt and the JVM
# artifacts pinned in infra/jvm/pom.xml, all under the ignored .work/ folder.

SHELL := /bin/bash
WORK := .work
VENV := $(WORK)/venv
PYTHON := $(VENV)/bin/python
LAKEHOUSE := $(VENV)/bin/lakehouse
INSTALLED := $(VENV)/.installed
SYSTEM_PYTHON ?= python3

# Caches of pip, matplotlib and anything honouring XDG stay in the project, not in HOME.
export PIP_CACHE_DIR := $(abspath $(WORK)/cache/pip)
export XDG_CACHE_HOME := $(abspath $(WORK)/cache)
export MPLCONFIGDIR := $(abspath $(WORK)/cache/matplotlib)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help setup jvm demo cluster-demo test test-fast notebooks bench up down status lock clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(INSTALLED): requirements.txt pyproject.toml
	@command -v java >/dev/null || { echo "Java 17 is required (Debian: apt-get install openjdk-17-jdk-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is required (Debian: apt-get install maven)"; exit 1; }
	test -x $(PYTHON) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps -e .
	touch $@

setup: $(INSTALLED) jvm ## Create the venv and fetch the JVM artifacts (both cached)

jvm: $(INSTALLED) ## Fetch the pinned JVM artifacts (Delta with S3A, Trino, Kafka, S3Proxy, Flink) with mvn
	$(LAKEHOUSE) setup --component delta --component trino --component kafka --component s3 --component flink

demo: setup ## The main job: one full Lambda cycle (generate, batch, speed, Trino merged view)
	$(LAKEHOUSE) demo

cluster-demo: setup ## The demo's cycle on the local cluster mode (Spark standalone, Flink session + Beam worker pool, Trino coordinator + worker); .work/cluster-demo.json
	$(LAKEHOUSE) demo --cluster

test: setup ## All tests, with real Spark + Delta, Beam, Trino and Kafka
	$(PYTHON) -m pytest

test-fast: $(INSTALLED) ## Only the tests that start no engine
	$(PYTHON) -m pytest -m "not spark and not trino and not kafka and not beam and not flink and not e2e and not cluster"

notebooks: setup ## Execute notebooks/ on the current warehouse (after `make demo`); copies with outputs in .work/notebooks
	$(PYTHON) -m app.notebooks

bench: setup ## Every benchmark (batch, speed, serving, quality) against its reference; BENCH_SOAK_MINUTES=N adds the speed soak; .work/bench/report.json + report.md
	$(PYTHON) -m bench.batch_bench --rows $${BENCH_ROWS:-1000000}
	$(PYTHON) -m bench.speed_bench --quick --events $${BENCH_EVENTS:-20000} $${BENCH_SOAK_MINUTES:+--soak-minutes $$BENCH_SOAK_MINUTES}
	$(PYTHON) -m bench.serving_bench --quick
	$(PYTHON) -m bench.quality_bench
	$(PYTHON) -m bench.report

up: setup ## Start the local Trino and Kafka (CLUSTER=1: the local cluster mode)
	$(LAKEHOUSE) up $${CLUSTER:+--cluster}

down: $(INSTALLED) ## Stop the local Trino and Kafka
	$(LAKEHOUSE) down

status: $(INSTALLED) ## Show the local services
	$(LAKEHOUSE) status

lock: ## Recompile requirements.txt from requirements.in in a scratch venv
	rm -rf $(WORK)/lock-venv && $(SYSTEM_PYTHON) -m venv $(WORK)/lock-venv
	$(WORK)/lock-venv/bin/pip install --quiet -r requirements.in
	{ echo "# Pinned lock of requirements.in (every package, every version): \`make lock\` regenerates it."; \
	  echo "# Installed by \`make setup\` into .work/venv; the project itself is installed editable on top."; \
	  $(WORK)/lock-venv/bin/pip freeze --exclude-editable; } > requirements.txt
	rm -rf $(WORK)/lock-venv

clean: ## Stop services and remove .work/ except the download caches
	-$(LAKEHOUSE) down
	rm -rf $(WORK)/venv $(WORK)/services $(WORK)/warehouse $(WORK)/data $(WORK)/spark
