# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck pytest test-tools bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "refreshd needs Python 3.11 or newer; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m refreshd.demo

lint: $(STAMP)
	$(BIN)/ruff check refreshd tests $(wildcard bench)
	$(BIN)/ruff format --check refreshd tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy --strict refreshd

# Most tests wait on real processes and real time, not the CPU: several at once.
PYTEST_WORKERS ?= 4

pytest: $(STAMP) test-tools
	$(BIN)/pytest -q -n $(PYTEST_WORKERS)

# libfaketime lets the clock-step tests move a real daemon's wall clock. Installed when we
# can (root with apt); elsewhere those tests skip and say why.
test-tools:
	@test -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	       && apt-get update -qq && apt-get install -y -qq faketime >/dev/null; } \
	  || echo "faketime not installed: the clock-step tests will skip"

test: lint typecheck pytest

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
