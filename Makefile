# Two commands from nothing: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(wildcard book/*.ipynb)
# Chapters and the demo share generated data and trained detectors here.
export ASDFLOW_CACHE ?= $(CURDIR)/.asdflow-cache

.PHONY: demo test lint unit doctest notebooks book check-site pair clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test,book]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/asdflow demo

test: lint unit doctest notebooks book

# Style, formatting, and the types of the package (mypy's settings are in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check asdflow tests tools
	$(VENV)/bin/ruff format --check asdflow tests tools
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest tests -q

# The examples in the package's docstrings, run as tests.
doctest: $(STAMP)
	$(PY) -m pytest --doctest-modules asdflow -q -p no:cacheprovider

notebooks: $(STAMP)
	@if [ -n "$(NOTEBOOKS)" ]; then \
		ASDFLOW_QUICK=1 $(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider -q $(NOTEBOOKS); \
	else echo "no notebooks yet"; fi

book: $(STAMP)
	ASDFLOW_QUICK=1 $(VENV)/bin/jupyter-book build . -W --keep-going

check-site: $(STAMP)
	$(PY) tools/check_site.py _build/html

pair: $(STAMP)
	$(PY) tools/pair_notebooks.py

clean:
	rm -rf _build
