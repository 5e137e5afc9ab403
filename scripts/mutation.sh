#!/usr/bin/env bash
# Mutation testing (mutmut) of the modules that carry guarantees, from a fresh clone: `make mutation`.
#
#   make mutation                          # every module in [tool.mutmut] only_mutate; resumes where it stopped
#   make mutation MODULES="conditions spec" # just these (dotted under airflow_provider_carerix), re-run
#   MUTATION_JOBS=1 make mutation           # workers (default 2; each runs pytest on one mutant)
#   make mutation NAMES='airflow_provider_carerix.triggers.events.xǁCarerixEventTriggerǁ_handle__mutmut_*'
#                                           # only these mutants (mutmut name globs: one function), re-run
#
# mutmut copies the project into mutants/, and for each mutant runs the tests that reached the mutated
# function, from the fast test files in [tool.mutmut] pytest_add_cli_args_test_selection. It runs niced:
# it is a background job on a shared machine, not part of CI. The last lines are the score per module.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
VENV="${VENV:-.venv}"
if ! "$VENV/bin/python" -c 'import mutmut' 2>/dev/null; then
  echo "==> installing the 'mutation' extra (mutmut) into $VENV"
  "$VENV/bin/python" -m pip install --quiet -e ".[mutation]"
fi

names=()
for module in ${MODULES:-}; do
  names+=("airflow_provider_carerix.${module}.*")
done
set -f  # the globs are mutmut's, not the shell's
for name in ${NAMES:-}; do
  names+=("$name")
done
set +f
# A mutant that makes a test wait (a cursor that never moves, a lease never released) would hold a worker for
# the suite's 600 s per-test timeout: cap each test at MUTATION_TEST_TIMEOUT seconds instead (a timed-out test
# counts as a kill, so the cap sits far above the slowest other selected test: 8 s in mutmut's stats), and
# leave out the one test that can take minutes there (1,000 watchers; its mutants are caught by others or not).
export PYTEST_ADDOPTS="${PYTEST_ADDOPTS:-} --timeout=${MUTATION_TEST_TIMEOUT:-45} --deselect tests/test_triggers.py::test_thousand_watchers_share_one_query_per_interval"
set +e
nice -n "${MUTATION_NICE:-10}" "$VENV/bin/mutmut" run --max-children "${MUTATION_JOBS:-2}" "${names[@]}"
rc=$?
set -e
"$VENV/bin/python" scripts/mutation_report.py ${MODULES:-}
exit "$rc"
