.PHONY: demo test test-matrix lint install mutation planted-bugs

# Set up (venv + install) and run the complete local demo: emulator, receiver, Airflow, events.
demo:
	bash scripts/demo.sh

# Set up (venv + install) and run ruff plus the whole test suite.
test:
	bash scripts/test.sh

# The tests on every supported Airflow minor (3.1, 3.2, 3.3), one venv each; see scripts/test_matrix.sh.
test-matrix:
	bash scripts/test_matrix.sh

install:
	bash scripts/bootstrap.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

# Set up (venv + install mutmut) and run mutation testing; not part of CI (slow). See scripts/mutation.sh.
mutation:
	bash scripts/mutation.sh

# Plant known bugs where mutmut cannot reach (decorated store methods, constants) and check each is caught.
planted-bugs:
	bash scripts/bootstrap.sh && .venv/bin/python scripts/planted_bugs.py $(if $(K),-k "$(K)")
