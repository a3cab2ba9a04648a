# Two entry points (see README):
#   make reproduce   - create .venv if needed, build the embedded benchmark, execute every
#                      notebook headless through papermill -> results/$(PROFILE)/
#   make test        - create .venv if needed, run the whole test suite (notebooks included)
PROFILE ?= smoke
PYTHON  ?= python3.11
VENV    ?= .venv
PY      := $(VENV)/bin/python
# The stamp changes whenever the dependency list changes, so a stale venv is refreshed.
STAMP   := $(VENV)/.clipsam-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

export HF_HUB_OFFLINE ?= 1
export MPLBACKEND ?= Agg
export PYTHONHASHSEED ?= 0

.PHONY: env reproduce test lint clean-results

env: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: install Python 3.11 or run 'make PYTHON=/path/to/python3.11'."; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.clipsam-* && touch $(STAMP)

reproduce: env
	$(VENV)/bin/clipsam run --profile $(PROFILE)

test: env
	$(PY) -m pytest -q -rs --durations=15

lint: env
	$(VENV)/bin/ruff check clipsam_lib tests bench

clean-results:
	rm -rf results/$(PROFILE)
