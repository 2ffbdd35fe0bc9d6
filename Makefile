# The README's two commands. Both create .venv in the checkout on first use.
.PHONY: setup demo test test-fast lint

setup:
	bash scripts/setup_env.sh

demo: setup
	.venv/bin/python multi_stage/run_demo.py --out demo_output

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest tests

# The tests a developer runs often: all but those marked slow. One OpenMP thread unless
# OMP_NUM_THREADS says otherwise: the tests' tensors are tiny, and on a busy machine a process's
# threads wait for each other.
test-fast: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} .venv/bin/python -m pytest -m "not slow" tests

lint: setup
	.venv/bin/ruff check .
