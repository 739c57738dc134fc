# Two commands for a fresh machine (see README.md): `make demo` and `make test`.
# Both create the Python 3.12 venv in .venv on first use.
PYTHON ?= python3.12
VENV := .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/demo
# torch==2.13.0 is pinned for the install so pip reuses the same wheel everywhere; setup.py
# itself allows any torch >= 2.6.
TORCH ?= torch==2.13.0

$(VENV)/.installed: setup.py
	PYENV_VERSION=$${PYENV_VERSION:-3.12.1} $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" -e ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/chimed pipeline experiment=demo run_dir=$(RUN_DIR)

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q --durations=25

# The quick loop while editing: no torchrun launches, no Slurm, nothing slow (< 3 min here).
test-fast: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow and not distributed and not slurm and not gpu"

.PHONY: venv demo test test-fast
