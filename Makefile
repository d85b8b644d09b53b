# The README's two commands are `make demo` and `make test`; both set up first.
PYTEST_ARGS ?=

.PHONY: setup test unit lab-test demo bench clean-lab

setup:
	@scripts/setup.sh

test: setup
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

unit: setup
	.venv/bin/python -m pytest -q tests/unit $(PYTEST_ARGS)

demo: setup
	.venv/bin/tandem demo

bench: setup
	.venv/bin/tandem bench --json --write docs/benchmarks.md

clean-lab: setup
	.venv/bin/tandem lab down
