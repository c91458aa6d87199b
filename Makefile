# Set-up is part of every target: a fresh machine needs only python3 (3.11).
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
WORKDIR ?= runs/compare

.PHONY: install train test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	# torchattacks' metadata asks for a CUDA torch; the pinned CPU torch is already installed.
	$(PY) -m pip install -q --no-deps torchattacks==3.5.1
	touch $(STAMP)

# ERM vs adversarial training (s=1) vs shared adversarial training (s=32) on
# the embedded digits; the ERM run's summary is $(WORKDIR)/erm/summary.json.
train: $(STAMP)
	$(PY) sweep.py --config configs/compare_digits.py --workdir $(WORKDIR)

# Two test processes (pytest-xdist): XLA:CPU compiles, which dominate the
# suite, are single-threaded. loadscope runs each test module whole on one
# worker, so a module's shared fixtures are built once; the workers take the
# modules in tests/conftest.py's order. `$(PY) -m pytest tests/...` runs serially.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadscope --no-loadscope-reorder

# JAX vs PyTorch timings -> BENCHMARKS.md. BENCH_ARGS passes flags to
# benchmarks/run.py, e.g. BENCH_ARGS="--quick" or "--workloads pgd --models resnet20".
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -c "import torch, torchattacks, foolbox, art" 2>/dev/null || \
	  ($(PY) -m pip install -q -e ".[bench]" && $(PY) -m pip install -q --no-deps torchattacks==3.5.1)
	$(PY) -m benchmarks.run $(BENCH_ARGS)
	$(PY) -m benchmarks.bench_cost_ratios
	$(PY) -m benchmarks.bench_denoise_cost

clean:
	rm -rf runs .pytest_cache
