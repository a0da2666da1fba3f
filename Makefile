# ESS developer entry points. `make test` and `make demo` set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp changes whenever the dependency declarations change, so a stale venv is rebuilt.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
PYTEST_FLAGS ?= -q

.PHONY: install lint fmt schemas test test-unit test-integration check-alerts demo clean bench bench-gate bench-detect bench-broker bench-flatten bench-replay bench-restart chaos sim up

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[server,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@# The pure core and the contract never read the clock: time is data there.
	@! grep -rnE 'datetime\.now\(|datetime\.utcnow\(|time\.time\(|os\.environ' ess/core schemas \
		|| (echo "clock or environment read in the pure core (see above)"; exit 1)

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

schemas: install
	$(BIN)/python -m schemas.export

test: lint check-alerts
	$(BIN)/pytest $(PYTEST_FLAGS) --cov --cov-report=term-missing:skip-covered --cov-fail-under=85

# Prometheus alerting rules: promtool check + unit tests; fetches promtool once into .venv/bin
# (Debian/Ubuntu), or says it skipped the check where it cannot.
check-alerts:
	@.ci/check-alerts

test-unit: install
	$(BIN)/pytest $(PYTEST_FLAGS) -m "not integration"

test-integration: install
	$(BIN)/pytest $(PYTEST_FLAGS) -m integration

demo: install
	$(BIN)/python -m ess.examples.seed_demo
	$(BIN)/python -m ess.examples.trading_demo
	$(BIN)/python -m ess.examples.venues_demo

bench-gate: install
	$(BIN)/python -m bench.bench_gate

bench-detect: install
	$(BIN)/python -m bench.bench_detect

bench-flatten: install
	$(BIN)/python -m bench.bench_flatten

bench-replay: install
	$(BIN)/python -m bench.bench_replay

bench-restart: install
	$(BIN)/python -m bench.bench_restart

bench-broker: install
	$(BIN)/python -m bench.bench_broker

chaos: install
	$(BIN)/python -m ess.chaos

sim: install
	$(BIN)/python -m ess.sim --port 8090 --seed-demo

# All of ESS on this host (embedded broker, simulator, PolicyStore, every role); Ctrl-C stops.
up: install
	$(BIN)/ess up

bench: bench-gate bench-detect bench-broker bench-flatten bench-replay bench-restart

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage htmlcov
