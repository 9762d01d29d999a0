# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck pytest test-tools bench clean

# uv installs the project and its ~50 packages in a few seconds where pip takes ~20: every
# fresh clone (CI's) pays this before the first test starts. pip stays in the venv for what
# asks for it (the packaging test, `make bench`).
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "refreshd needs Python 3.11 or newer; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'uv>=0.5'
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m refreshd.demo

lint: $(STAMP)
	$(BIN)/ruff check refreshd tests $(wildcard bench)
	$(BIN)/ruff format --check refreshd tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy --strict refreshd

# Most tests wait on real processes and real time, not the CPU: several at once. On two
# cores (2026-11-30, 2,139 tests) 8 workers took 140 s, 10 took 121 s (twice), 12 took 120
# to 126 s with both cores saturated and a timing test failing once; docs/PERFORMANCE.md,
# section F.
PYTEST_WORKERS ?= 10
# More pytest options, e.g. bench/first_release.py's plugin.
PYTEST_ARGS ?=

# Bytecode and pytest's rewritten test modules are cached even where the shell sets
# PYTHONDONTWRITEBYTECODE: without the cache every worker compiles every test module again.
# One collection first fills that cache (in a fresh clone each worker would otherwise rewrite
# every module itself: ~4 s of CPU each). pyproject's addopts hand tests out one at a time
# (loadgroup, not reordered) in the order tests/conftest.py gives, long ones first, so no
# worker is left with a queue of long tests while the others idle.
pytest: $(STAMP) test-tools
	@env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest -q --collect-only -p no:cacheprovider >/dev/null 2>&1 || true
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# libfaketime lets the clock-step tests move a real daemon's wall clock; promtool (Debian's
# `prometheus` package) tests the shipped alert rules; Debian's `chromium` is the browser
# Playwright drives for the status page (Playwright's own browser download is not used).
# Installed when we can (root with apt); elsewhere those tests skip and say why (the
# alert-rule and browser tests fail under CI=true).
test-tools:
	@test -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	       && apt-get update -qq && apt-get install -y -qq faketime >/dev/null; } \
	  || echo "faketime not installed: the clock-step tests will skip"
	@command -v promtool >/dev/null \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq \
	       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	          prometheus >/dev/null; } \
	  || echo "promtool not installed: the alert-rule test will skip (and fail under CI=true)"
	@test -x /usr/bin/chromium \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq \
	       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	          chromium >/dev/null; } \
	  || echo "chromium not installed: the status page's browser test will skip (and fail under CI=true)"

# Lint and type checks run beside the tests: they are short and CPU-bound, the tests wait on
# processes much of the time. Each part's output is shown whole when it ends.
test: $(STAMP) test-tools
	@$(MAKE) --no-print-directory -j3 --output-sync=target lint typecheck pytest

bench: $(STAMP)
	@command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
	@$(BIN)/py-spy --version >/dev/null 2>&1 || $(BIN)/python -m pip install --quiet --disable-pip-version-check 'py-spy>=0.3.14'
	rm -rf bench/results
	@start=$$(date +%s); \
	for b in dispatch accuracy idle scale soak simulator; do \
		(cd bench && PYTHONUNBUFFERED=1 $(abspath $(BIN))/python $$b.py) || exit 1; \
	done; \
	took=$$(( $$(date +%s) - start )); \
	echo "make bench: $$took s"; \
	cd bench && $(abspath $(BIN))/python report.py "$$(( took / 60 )) min $$(( took % 60 )) s"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
