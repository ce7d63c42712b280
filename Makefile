# lmproject: `make demo` runs the whole pipeline offline; `make test` runs lint and the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed

DATASET ?= tinystories
DATA_DIR := data/$(DATASET)
ifeq ($(DATASET),tinystories)
  TRAIN_TXT := $(DATA_DIR)/TinyStoriesV2-GPT4-train.txt
  VALID_TXT := $(DATA_DIR)/TinyStoriesV2-GPT4-valid.txt
  VOCAB_SIZE ?= 10000
else ifeq ($(DATASET),owt)
  TRAIN_TXT := $(DATA_DIR)/owt_train.txt
  VALID_TXT := $(DATA_DIR)/owt_valid.txt
  VOCAB_SIZE ?= 32000
else
  $(error DATASET must be tinystories or owt, got '$(DATASET)')
endif
TOKENIZER_DIR := $(DATA_DIR)/tokenizer

.PHONY: install test test-fast lint demo bench data tokenizer tokenize smoke-data clean

# CPU machines get the pinned CPU build of torch first; machines with an NVIDIA driver get the
# regular (CUDA) build through the normal requirement in pyproject.toml.
# Each step says what it does (the whole install takes a few minutes on a fresh machine).
$(STAMP): pyproject.toml setup.py lmproject/tokenizer/_merge.c
	@echo "==> install 1/3: virtual environment $(VENV) and a current pip"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "==> install 2/3: torch (the CPU build without an NVIDIA driver; about a minute)"
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	@echo "==> install 3/3: lmproject and its dependencies (Lightning, transformers, ...; a minute or two)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)
	@echo "==> installed: $(VENV)/bin/lmproject, $(VENV)/bin/lmproject-bpe"

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning, which keeps the many small
# torch runs of the suite fast when the cores are shared.
test: lint
	OMP_WAIT_POLICY=PASSIVE $(BIN)/pytest -q

# The quick lane while editing: no lint, and none of the tests marked slow or
# multiprocess (pyproject.toml lists the markers); `make test` still runs everything.
test-fast: install
	OMP_WAIT_POLICY=PASSIVE $(BIN)/pytest -q -m "not slow and not multiprocess"

demo: install
	$(PY) -m lmproject.tools.demo --out demo

bench: install
	$(PY) bench/run_all.py

data: install
	$(PY) -m lmproject.tools.download $(DATASET) --dest $(DATA_DIR)

tokenizer: install
	$(BIN)/lmproject-bpe train $(TRAIN_TXT) --vocab-size $(VOCAB_SIZE) \
	    --special-token '<|endoftext|>' --out $(TOKENIZER_DIR)

tokenize: install
	$(BIN)/lmproject-bpe encode --tokenizer $(TOKENIZER_DIR) $(TRAIN_TXT) $(DATA_DIR)/train.npy
	$(BIN)/lmproject-bpe encode --tokenizer $(TOKENIZER_DIR) $(VALID_TXT) $(DATA_DIR)/valid.npy

# A tiny data set from the built-in story generator for configs/smoke.yaml (seconds, offline).
smoke-data: install
	mkdir -p data/smoke
	$(PY) -m lmproject.tools.stories --out data/smoke/train.txt --size-mb 2 --seed 0
	$(PY) -m lmproject.tools.stories --out data/smoke/valid.txt --size-mb 0.2 --seed 1
	$(BIN)/lmproject-bpe train data/smoke/train.txt --vocab-size 512 --special-token '<|endoftext|>' \
	    --out data/smoke/tokenizer
	$(BIN)/lmproject-bpe encode --tokenizer data/smoke/tokenizer data/smoke/train.txt data/smoke/train.npy
	$(BIN)/lmproject-bpe encode --tokenizer data/smoke/tokenizer data/smoke/valid.txt data/smoke/valid.npy

include experiments.mk

clean:
	rm -rf runs demo .pytest_cache .ruff_cache
