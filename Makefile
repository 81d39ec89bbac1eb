# npas-lab: two commands on a fresh clone (README): `make reproduce` and `make test`.
# Both create .venv with the pinned dependencies first; nothing but Python 3.11 is needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Re-install when the dependency pins change.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PROFILE ?= quick
# Debian packages: the aarch64 cross-linker (Android/arm64 device profiles) and Chromium (PNG
# figures through kaleido, the browser test). Installed when apt-get can (root); the code that
# needs them says what to install where they are missing.
SYSTEM_PACKAGES := gcc-aarch64-linux-gnu chromium
SYSTEM_STAMP := $(VENV)/.system-packages

.PHONY: setup reproduce test lint lab benchmarks clean

setup: $(STAMP) $(SYSTEM_STAMP)

$(SYSTEM_STAMP):
	@mkdir -p $(VENV)
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
		if [ -n "$$missing" ]; then \
			echo "installing Debian packages: $$missing"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
				|| echo "WARNING: could not install $$missing (PNG figures / arm64 cross-compiling will say what is missing)"; \
		fi; \
	else \
		echo "NOTE: not root or no apt-get: install $(SYSTEM_PACKAGES) yourself for PNG figures and arm64 cross-compiling"; \
	fi
	@touch $@

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
