# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision come first, pinned, so that pip takes the pair from local disk.
TORCH_PAIR := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PAIR)
	$(PY) -m pip install -q -e .
	touch $@

# taming-transformers (a reference for VQGAN's tests) without its declared pytorch-lightning: the tests use its
# Encoder, Decoder and quantizer modules only, which need torch, numpy and einops.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps taming-transformers-rom1504==0.0.6
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/visionzoo tour --out runs/tour --overwrite

test: $(VENV)/.installed-test
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q -n 2 --dist load

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
