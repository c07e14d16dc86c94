# Two entry points a new user needs; each creates or reuses .venv and installs what it needs.
#   make demo   train 2 folds on the embedded demo data, ensemble them, write submissions/demo.csv
#   make test   run the test suite (what CI runs), two pytest workers: TF graph tracing is single-threaded
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,test
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install demo test bench clean

$(VENV)/.installed-$(EXTRAS): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

demo: install
	$(PY) -m cxrlt.train --config configs/demo.yaml --demo
	$(PY) -m cxrlt.ensemble --runs runs/demo --out submissions/demo.csv

test: install
	$(PY) -m pytest -q -n 2 --dist loadgroup

clean:
	rm -rf runs/demo demo_data submissions/demo.csv submissions/demo.zip submissions/demo.metrics.json
