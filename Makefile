# `make run` and `make test` create .venv on first use; nothing else needs installing by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv bytecode lint run test test-all bench tensorboard clean

$(STAMP): pyproject.toml constraints.txt
	@echo "Creating $(VENV) with torch, torchvision, hydra-core, tensorboard, rich, mlxtend (first time: about 2 minutes)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	$(BIN)/pip install -qq -e '.[test,timm]' -c constraints.txt --config-settings editable_mode=compat  # the repository on the path: Hydra scans hydra_plugins/ there; the exact versions of constraints.txt
	touch $(STAMP)

venv: $(STAMP)

# The project's bytecode, as pip writes it for installed packages: where PYTHONDONTWRITEBYTECODE is
# set (as in many containers) every run would otherwise compile ablate's sources again (0.15 s of
# its start-up). Files already compiled are skipped.
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q runner models optim hydra_plugins

run: bytecode  ## the main job: a quick ablation on the embedded MNIST digits, with its summary
	$(BIN)/run -m experiment=quick

lint: $(STAMP)  ## ruff's findings (pyproject.toml) and its formatting, checked
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: bytecode lint  ## the fast tests, on every core, then the 10 slowest of them
	$(BIN)/pytest -n auto -m "not slow" --durations=10

test-all: bytecode lint  ## every test, the slow ones too (what CI runs); the SLURM tests alone, after the others
	$(BIN)/pytest -n auto --durations=20 --ignore=tests/test_slurm.py
	$(BIN)/pytest -p no:xdist --durations=5 tests/test_slurm.py

bench: $(STAMP)  ## training images/s: a minimal loop vs ablate vs a DataLoader, side by side, 5 alternating rounds (about 23 minutes on 2 cores)
	$(BIN)/python benchmarks/throughput.py

tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir outputs

clean:
	rm -rf outputs/runs outputs/sweeps
