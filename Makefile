# `make demo` and `make test` set up .venv on first use (Python >= 3.10 and make are all they need).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/digits.py
WORKDIR ?= runs/digits

.PHONY: install demo test benchmark clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The undefended model next to LPA on the embedded digits, with the controls every protective claim
# needs: `random` (same radius, no alignment) and the `floor` attacker (exact zeros are no trap).
demo: install
	$(PY) -m launch.compare --config=$(CONFIG) --workdir=$(WORKDIR) --defenses=none,random,lpa \
	    --attackers=none,floor

test: install
	$(PY) -m pytest tests

clean:
	rm -rf runs .pytest_cache
