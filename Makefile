# `make demo` runs the main job on the embedded default; `make test` runs the test suite.
# Both create or refresh .venv first. TORCH pins the CPU build found on this machine; on a GPU machine
# run e.g. `make test TORCH=torch` to keep the CUDA build pip chooses there.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: demo test lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	@echo "== safelatent demo: the training pipeline is not built yet, so the demo runs the furthest real step:"
	@echo "== building the safety micro-world (the generated alignment problem every method trains on)."
	$(BIN)/safelatent data build --out $(DEMO_DIR)/microworld -c pipelines/configs/microworld.yaml
	$(BIN)/safelatent data inspect $(DEMO_DIR)/microworld
	@echo "== done: the micro-world is in $(DEMO_DIR)/microworld (a Hugging Face DatasetDict)."

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
