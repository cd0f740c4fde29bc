# The two commands of the README: `make demo` and `make test`. Both set up .venv on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-test

.PHONY: test demo venv bench-map lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# The streaming daemon on a simulated PILATUS 2M: progress once a second, then where the files are (out/demo/).
demo: $(STAMP)
	$(PY) -m ringstream.daemon.demo

bench-map: $(STAMP)
	$(PY) bench/map_build.py

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff && $(VENV)/bin/ruff check ringstream tests bench

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
