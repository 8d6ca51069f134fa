# The README's two commands: `make demo` and `make test`. Both install into .venv from nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test worker redis bench clean

$(BIN)/chatq: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

redis:
	@.ci/ensure-redis

demo: $(BIN)/chatq redis
	$(BIN)/chatq demo

test: $(BIN)/chatq redis
	$(BIN)/python -m pytest -q

worker: $(BIN)/chatq redis
	$(BIN)/chatq worker

bench: $(BIN)/chatq redis
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) *.egg-info
