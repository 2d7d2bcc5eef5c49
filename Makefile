# Set-up and the two main commands. Each creates .venv on first use: torch 2.13.0 (CPU wheel) first, then the
# package with its test and example extras and torchattacks, so pip never pulls a CUDA build of torch.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	# AutoAttack for the robustness report: torchattacks without its torchvision requirement (it imports without it)
	$(BIN)/pip install --quiet --no-deps torchattacks==3.5.1
	$(BIN)/pip install --quiet scipy requests tqdm
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q tests

demo: install
	$(BIN)/mimir-hf run demo --output_dir outputs/demo --overwrite_output_dir

clean:
	rm -rf $(VENV) outputs
