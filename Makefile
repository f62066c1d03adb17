# The two set-up commands of the README: `make demo` and `make test` (ruff, mypy, then pytest: what CI runs).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
FMNIST  = /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test lint install fashion-mnist clean check-wheel

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first: the pinned pair installs from a local wheel cache where one exists; elsewhere any
# torch>=2.4 from the index will do (pyproject keeps the range).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || \
	  $(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 || $(BIN)/pip install -q "torch>=2.4" "torchvision>=0.19"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

fashion-mnist:
	@if [ -f $(FMNIST) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || \
	  echo "apt-get could not install dataset-fashion-mnist: isd will try torchvision's download"; \
	else echo "Fashion-MNIST not in /usr/share/datasets: isd will try torchvision's download" \
	  "(or run 'sudo apt-get install dataset-fashion-mnist')"; fi

demo: install fashion-mnist
	$(BIN)/isd demo

# then the tests whose outcome depends on float rounding again, under ATen's portable and AVX2 kernels (with this
# CPU's own, three kernel sets on an AVX512 host; a CPU without AVX2 runs the portable ones twice)
test: install lint
	$(BIN)/python -m pytest -q
	for kernels in default avx2; do \
	  echo "float_bits tests under ATEN_CPU_CAPABILITY=$$kernels"; \
	  ATEN_CPU_CAPABILITY=$$kernels $(BIN)/python -m pytest -q -m "float_bits and not slow" -rs -p no:cacheprovider || exit 1; \
	done

# sdist + wheel, installed into a fresh environment outside the source tree, then used as a user would (CI runs it)
check-wheel: install
	bash tools/check_wheel.sh

lint: install
	$(BIN)/ruff check src
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .mypy_cache .ruff_cache
