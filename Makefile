# The README's two commands. Both create .venv in the checkout on first use.
.PHONY: setup demo test lint

setup:
	bash scripts/setup_env.sh

demo: setup
	.venv/bin/python multi_stage/run_demo.py --out demo_output

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest tests

lint: setup
	.venv/bin/ruff check .
