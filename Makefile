# `make train`: distill the default config (offline) into $(WORKDIR).
# `make test`: the test suite. Both create the virtualenv on first use.
PYTHON_SYSTEM ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
WORKDIR ?= workdirs/default

.PHONY: train eval test clean

$(VENV)/.installed: requirements.txt
	$(PYTHON_SYSTEM) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $@

train: $(VENV)/.installed
	$(PYTHON) train.py --config=configs/default.py --workdir=$(WORKDIR)
	$(PYTHON) eval.py --workdir=$(WORKDIR)

test: $(VENV)/.installed
	$(PYTHON) -m pytest -n auto --maxprocesses=4 --dist=worksteal tests

clean:
	rm -rf $(VENV) workdirs
