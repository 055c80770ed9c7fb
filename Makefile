VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp

.PHONY: setup demo test lint bench eval clean

setup: $(STAMP)

$(STAMP): pyproject.toml tools/setup_env.sh
	bash tools/setup_env.sh $(VENV)

## Private generation with the embedded SmolLM2-135M-Instruct (2 parties + trusted dealer).
demo: setup
	$(VENV)/bin/crypten-mpcache generate --max-new-tokens 8

## The default test suite (slow real-model tests excluded).
test: setup
	$(VENV)/bin/ruff check crypten_mpcache patches tests demos benchmarks
	$(PY) -m pytest -q -m "not slow" tests

lint: setup
	$(VENV)/bin/ruff check crypten_mpcache patches tests demos benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
