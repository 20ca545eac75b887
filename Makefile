# `make demo` and `make test` each create .venv with the pinned dependencies when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONPATH := $(CURDIR)
SHELL := /bin/bash
# pip warns "Location 'file:///...' is ignored" once per package for every local file:// index in
# the machine's pip configuration that lacks that package (pip config list shows them); those
# lines say nothing about this project, so they are dropped and pip's other output kept.
PIP_LOCATION_NOTICE := ^WARNING: Location 'file:[^']*' is ignored: it is neither a file nor a directory\.$$
PIP_INSTALL = set -o pipefail; $(PY) -m pip install --quiet $(1) 2>&1 | { grep -v "$(PIP_LOCATION_NOTICE)" || true; }

.PHONY: demo test bench venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(call PIP_INSTALL,--upgrade pip)
	$(call PIP_INSTALL,-e '.[test]')
	touch $@

demo: venv
	$(PY) -m tools.demo --flagfile=configs/demo.flags

test: venv
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: venv
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) runs benchmarks/results
