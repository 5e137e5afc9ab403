.PHONY: demo test lint install

# Set up (venv + install) and run the complete local demo: emulator, receiver, Airflow, events.
demo:
	bash scripts/demo.sh

# Set up (venv + install) and run ruff plus the whole test suite.
test:
	bash scripts/test.sh

install:
	bash scripts/bootstrap.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
