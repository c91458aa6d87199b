# Set-up is part of every target: a fresh machine needs only python3 (3.11).
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
WORKDIR ?= runs/default

.PHONY: install train test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	# torchattacks' metadata asks for a CUDA torch; the pinned CPU torch is already installed.
	$(PY) -m pip install -q --no-deps torchattacks==3.5.1
	touch $(STAMP)

train: $(STAMP)
	$(PY) train.py --config configs/default.py --workdir $(WORKDIR)
	$(PY) eval.py --config configs/default.py --workdir $(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf runs .pytest_cache
