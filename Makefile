# Everything a fresh machine needs: `make demo` and `make test` create .venv and install kpconv into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kpconv-installed
DEMO   ?= demo_out

.PHONY: venv demo test test-fast bench bench-accuracy fixtures golden clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job end to end: synthetic data -> ingest -> shard -> train (2 minutes) -> eval -> predict.
demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh $(DEMO)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

# Everything except tests marked slow (TensorFlow, training).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow'

# Regenerate the fixture datasets (deterministic) and, on purpose, the golden files.
fixtures: $(STAMP)
	$(BIN)/python fixtures/make_fixtures.py

golden: $(STAMP)
	$(BIN)/python -m pytest -q --update-golden

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_shard.py
	$(BIN)/python benchmarks/bench_predict.py

# The model on a real project and on synthetic data (about 2 hours with the defaults: 15 minutes a run).
bench-accuracy: $(STAMP)
	$(BIN)/python benchmarks/bench_accuracy.py

clean:
	rm -rf $(VENV) $(DEMO) build dist *.egg-info .pytest_cache
