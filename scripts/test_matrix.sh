#!/usr/bin/env bash
# The tests on every Airflow minor the package supports (latest patch of each), each in its own venv:
# the unit tests on all of them, the end-to-end tests (real scheduler, triggerer, ...) on the oldest and newest.
#   AIRFLOW_VERSIONS="3.1.8 3.2.2"    which versions get the unit tests (default: all supported)
#   AIRFLOW_E2E_VERSIONS="3.1.8"      which versions get the end-to-end tests (default: oldest and newest)
# Every leg runs even if an earlier one failed; a table at the end says which failed; exit 1 if any did.
# Installs are cached per venv (scripts/bootstrap.sh), so a second run costs only the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

SUPPORTED="3.1.8 3.2.2 3.3.2"
VERSIONS="${AIRFLOW_VERSIONS-$SUPPORTED}"
E2E_VERSIONS="${AIRFLOW_E2E_VERSIONS-3.1.8 3.3.2}"
# Every test that starts real Airflow processes, but the demo (a developer tool; `make test` runs it).
E2E_TESTS=(-m airflow_e2e --ignore=tests/test_demo.py)

declare -a summary=() failed_logs=()
failed=0

run_leg() {  # run_leg <airflow version> <label> <pytest args...>
  local version="$1" label="$2"
  shift 2
  local venv log rc
  venv="$(AIRFLOW_VERSION="$version" bash scripts/bootstrap.sh --venv)"
  log="$(mktemp -t "carerix-matrix-$version-$label-XXXX.log")"
  echo "==> Airflow $version: $label tests ($venv)"
  set +e
  # pytest -q prints its last line bare ("12 passed in 3.4s"), without the ===== frame of the default mode.
  PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$log" |
    grep -E '^(FAILED|ERROR)|(passed|failed|error|no tests ran).* in [0-9.]+s'
  rc=${PIPESTATUS[0]}
  set -e
  local counts
  counts="$(grep -E '(passed|failed|error|no tests ran).* in [0-9.]+s' "$log" | tail -1 | sed -E 's/^=+ (.*) =+$/\1/' || true)"
  [ "$rc" -eq 5 ] && counts="no tests collected"
  if [ "$rc" -ne 0 ]; then
    failed=1
    summary+=("FAIL  Airflow $version  $label: ${counts:-pytest exit $rc} (log: $log)")
    failed_logs+=("$log")
  else
    summary+=("ok    Airflow $version  $label: $counts")
    rm -f "$log"
  fi
}

start=$(date +%s)
for version in $VERSIONS $E2E_VERSIONS; do
  AIRFLOW_VERSION="$version" bash scripts/bootstrap.sh
done
for version in $VERSIONS; do
  run_leg "$version" unit -m "not airflow_e2e"
done
for version in $E2E_VERSIONS; do
  run_leg "$version" e2e "${E2E_TESTS[@]}"
done

echo
echo "==> Airflow test matrix ($(( $(date +%s) - start ))s)"
printf '  %s\n' "${summary[@]}"
# CI keeps only the end of the output: the end of each failed leg's log goes last.
for log in "${failed_logs[@]}"; do
  echo
  echo "==> last 60 lines of $log"
  tail -60 "$log"
done
exit "$failed"
