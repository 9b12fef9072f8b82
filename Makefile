# Two entry points; each creates .venv when it is missing.
#   make demo   the main job: the quick-start ablation (every normalizer, ViT on MNIST-5k)
#   make test   the test suite (what CI runs): the default set, then the wheel test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mmkit-installed

.PHONY: demo test bench env clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mmkit ablate -c configs/ablation/quick.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q -m slow tests/test_wheel.py

bench: $(STAMP)
	$(BIN)/python tools/bench_normalizers.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
