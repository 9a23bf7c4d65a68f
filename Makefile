# sgdtrace: `make run` sets up and reproduces the article's table; `make test` sets up, runs the tests
# and builds the docs.
PYTHON ?= python3
VENV   ?= .venv
# torch is pinned here only for installing: 2.13.0 is a CPU build that installs quickly.
# The package itself asks for torch>=2.1; override, e.g. `make test TORCH=torch==2.5.1`.
TORCH  ?= torch==2.13.0
# Where pip looks for torch (and only torch). Empty: the usual index, where Linux wheels are the
# CUDA build (~0.5 GB, plus ~2 GB of CUDA libraries). For the CPU-only build, PyTorch's own index:
#   make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
BIN    := $(VENV)/bin
# mkdocs-material 9.x prints a banner about its successor on every build; --quiet is not a way to
# hide it: it also hides the warnings that --strict counts, and a broken link then passes
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs
TORCH_PIP := $(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"

.PHONY: lint run test install dev check bench mutate docs readme readme-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(TORCH_PIP)
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(TORCH_PIP)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

# after `make run`, the command is $(BIN)/sgdtrace: `. $(BIN)/activate` puts it on the PATH
run: install
	$(BIN)/sgdtrace run

test: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q
	$(BIN)/sgdtrace check
	$(MKDOCS) build --strict

check: install
	$(BIN)/sgdtrace check

# the linter and the formatter's check, as `make test` runs them (`ruff format .` fixes the formatting)
lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mutation testing of the judge (not part of `make test`): mutants of the hand engine, the model
# seam and the tolerance model, each run against the gate's tests ([tool.mutmut] in pyproject.toml,
# docs/mutation.md); MUTATE_JOBS mutants at a time (one per core)
MUTATE_JOBS ?= 2
mutate: dev
	rm -rf mutants
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children $(MUTATE_JOBS)
	$(BIN)/python tools/mutation_score.py

# the docs site (mkdocs.yml): the README as its home page and the pages under docs/, built into
# site/; --strict turns a broken link or anchor into a failure
docs: dev
	$(MKDOCS) build --strict

# the examples of the README and of every page under docs/, re-run: every `<!-- sh: ... -->`
# block gets its command's real output, and every notebook under docs/ is executed (nbclient) and
# stored with its outputs; readme-check compares the outputs' text, never timings or image bytes
readme: dev
	$(BIN)/python tools/readme.py

readme-check: dev
	$(BIN)/python tools/readme.py --check

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .hypothesis

# the benchmark: the learner's plain torch loop against `sgdtrace run` (see benchmarks/bench.py)
bench: install
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/bench.py --optimizer adam --workloads article,100k-b1 --ddp-workloads ddp4-adam
	$(BIN)/python benchmarks/engine_bench.py
