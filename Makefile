# Two commands on a fresh machine:   make demo   (environment + the demo job)   and   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned, so nothing later pulls a second (CUDA) torch over it. Override on a GPU box:
#   make demo TORCH="torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu126"
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: env demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]' $(filter torch==% torchvision==%,$(TORCH))
	rm -f $(VENV)/.installed-* && touch $@

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/dr-ray demo --config configs/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_decode.py
	$(BIN)/python benchmarks/bench_preprocess_job.py

clean:
	rm -rf outputs .pytest_cache
