# Set-up and everyday commands. Each target installs what it needs first, so `make test`
# and `make demo` work on a fresh Debian machine.

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
# Touched after a successful install. pip runs again only when pyproject.toml or
# constraints.txt is newer than this file.
INSTALL_STAMP := $(VENV)/.vqkit-installed

DEMO_ARGS ?= --host 127.0.0.1 --port 7860
PYTEST_ARGS ?=

.PHONY: venv install debian-packages demo test bench

venv: $(VENV_PYTHON)

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

install: $(INSTALL_STAMP) debian-packages

$(INSTALL_STAMP): pyproject.toml constraints.txt | $(VENV_PYTHON)
	$(VENV_PYTHON) -m pip install -e '.[test]' -c constraints.txt
	touch $@

debian-packages:
	bash scripts/install-debian-packages

demo: install
	$(VENV)/bin/vqkit demo $(DEMO_ARGS)

test: install
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

bench: install
	$(VENV)/bin/vqkit bench all
