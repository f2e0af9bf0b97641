# Two entry points (see README): `make demo` and `make test`. Both set everything up first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch (an unpinned torch pulls several GB of CUDA packages). On a CUDA
# machine, install the CUDA build of the same version into the venv first: make keeps it.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test lint typing-view clean measure-setup
setup: $(STAMP)

$(STAMP): pyproject.toml
	./scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Dev-only: a trained speaker encoder for measurements (scripts/measure_speakers.py). No
# runtime code uses it. --no-deps: resemblyzer's metadata would pull the old webrtcvad sdist,
# whose module replaces webrtcvad-wheels' and breaks the VAD.
measure-setup: setup
	$(BIN)/python -m pip install -q -e ".[dev,measure]"
	$(BIN)/python -m pip install -q --no-deps "resemblyzer==0.1.4"

# out/ is the demo's own folder: a second `make demo` replaces its files. Where the Hub cannot
# be reached: `make demo CAPTIONS_MODEL=DIR`, a local checkpoint folder (README, Set-up).
CAPTIONS_MODEL ?=
demo: setup
	$(BIN)/harken run --input assets/sample.wav --fast --out out --format srt,vtt,jsonl,txt \
	  --overwrite $(if $(CAPTIONS_MODEL),--captions-model "$(CAPTIONS_MODEL)")

# mypy follows `harken.*` imports through this symlinked view of the remapped folders.
typing-view:
	mkdir -p build/typing/harken
	for d in app engine models; do ln -sfn ../../../$$d build/typing/harken/$$d; done

lint: setup typing-view
	$(BIN)/ruff check app engine models tests setup.py
	$(BIN)/mypy build/typing/harken

test: setup lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q

clean:
	rm -rf $(VENV) build out .pytest_cache .mypy_cache .ruff_cache
