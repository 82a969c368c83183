# Two commands do all the set-up on a fresh machine with only Python 3.11:
#   make demo   -> creates .venv, installs, runs the whole cascade on the built-in phantom
#   make test   -> creates .venv, installs with the dev extra, runs the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo_out
# test processes (pytest-xdist; a test file stays in one process, so its module fixtures are
# built once): 2 on the 2-core CI machine cut the suite from 13 to under 10 minutes, as most of a
# tiny test's time is single-threaded Python (graph tracing), not TensorFlow's kernels
TEST_WORKERS ?= 2
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: venv demo test test-slow clean

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=/path/to/python3.11)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/cm-trancaf demo --out $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info .pytest_cache
