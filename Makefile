# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned first: a bare `torch` requirement would pull a multi-GB CUDA build
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test,ray]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m tools.demo

test: install
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) demo-out
