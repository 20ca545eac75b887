# `make demo` and `make test` each create .venv with the pinned dependencies when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONPATH := $(CURDIR)

.PHONY: demo test bench venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: venv
	$(PY) -m tools.demo --flagfile=configs/demo.flags

test: venv
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: venv
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) runs benchmarks/results
