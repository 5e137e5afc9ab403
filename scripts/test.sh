#!/usr/bin/env bash
# The whole test suite, from a fresh clone: venv, install, lint, format check, every test.
# AIRFLOW_VERSION=3.1.8 runs it against that Airflow instead (in its own venv, see scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
VENV="$(bash scripts/bootstrap.sh --venv)"
export PATH="$PWD/$VENV/bin:$PATH"

echo "==> ruff check"
ruff check .
echo "==> ruff format --check"
ruff format --check .
echo "==> mypy (the package)"
mypy
echo "==> lint-imports (the layers in pyproject.toml)"
lint-imports

echo "==> pytest"
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
