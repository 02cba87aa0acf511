# The two commands of the quick start. Each builds its own environment in .venv from the
# pinned requirement files (PyTorch: the CPU build, for the reference modules in tests/).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-fast lint bench-inference clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# The full suite, slow-marked cases included (CI runs exactly this).
test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15 tests

# The default inner loop: everything but the slow-marked cases.
test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench-inference: $(STAMP)
	$(PY) -m benchmarks.inference

clean:
	rm -rf $(VENV)
