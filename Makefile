# npas-lab: two commands on a fresh clone (README): `make reproduce` and `make test`.
# Both create .venv with the pinned dependencies first; nothing but Python 3.11 is needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Re-install when the dependency pins change.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PROFILE ?= quick

.PHONY: setup reproduce test lint lab benchmarks clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"npas-lab needs Python 3.11, found {sys.version.split()[0]} (set PYTHON=...)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

reproduce: setup
	$(BIN)/npas-lab reproduce --profile $(PROFILE)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

lab: setup
	$(BIN)/jupyter lab notebooks/

benchmarks: setup
	$(BIN)/python benchmarks/engines.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
