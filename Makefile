# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/qfault demo --out demo-results

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/bench_inject.py
	$(BIN)/python bench/bench_sampling.py
	$(BIN)/python bench/bench_campaign.py
	$(BIN)/python bench/bench_mitigation.py
	$(BIN)/python bench/bench_statistics.py
	$(BIN)/python bench/bench_specs.py
	$(BIN)/python bench/bench_lsq.py
	$(BIN)/python bench/bench_lsq_accuracy.py
	$(BIN)/python bench/bench_sensitivity.py
	$(BIN)/python bench/bench_systolic.py
	$(BIN)/python bench/bench_fat.py

clean:
	rm -rf $(VENV) demo-results
