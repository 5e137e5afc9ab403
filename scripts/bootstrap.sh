#!/usr/bin/env bash
# Create a venv (if needed) and install the provider with Airflow and the test tools.
#   bash scripts/bootstrap.sh                          -> .venv with the newest supported Airflow
#   AIRFLOW_VERSION=3.1.8 bash scripts/bootstrap.sh    -> .venv-af3.1 (one venv per Airflow minor)
#   bash scripts/bootstrap.sh --venv                   -> only print the venv path for AIRFLOW_VERSION
# Older Airflow minors install with scripts/constraints/airflow-<minor>.txt: the few pins without which
# that Airflow breaks (Airflow's own constraints files pin everything; these pin what matters here).
# Re-running is cheap: the install is skipped while pyproject.toml, this script and the pins are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

DEFAULT_AIRFLOW_VERSION=3.3.2
AIRFLOW_VERSION="${AIRFLOW_VERSION:-$DEFAULT_AIRFLOW_VERSION}"
minor="$(echo "$AIRFLOW_VERSION" | cut -d. -f1,2)"
if [ "$AIRFLOW_VERSION" = "$DEFAULT_AIRFLOW_VERSION" ]; then
  VENV="${VENV:-.venv}"
else
  VENV="${VENV:-.venv-af$minor}"
fi
if [ "${1:-}" = "--venv" ]; then
  echo "$VENV"
  exit 0
fi

pick_python() {
  for py in "${PYTHON:-}" python3.12 python3.11 python3.10 python3.13 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] < (3, 14) else 1)' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "error: need Python 3.10-3.13 on PATH (or set PYTHON=...)" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  py=$(pick_python)
  echo "==> creating $VENV with $py"
  "$py" -m venv "$VENV"
fi

constraints="scripts/constraints/airflow-$minor.txt"
inputs=(pyproject.toml scripts/bootstrap.sh)
pins=()
if [ -f "$constraints" ]; then
  inputs+=("$constraints")
  pins=(--constraint "$constraints")
fi
stamp="$VENV/.carerix-installed"
want="$(cat "${inputs[@]}" | sha256sum | cut -c1-16)-$AIRFLOW_VERSION"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "==> installing airflow-provider-carerix with apache-airflow==$AIRFLOW_VERSION into $VENV${pins[*]:+ (pins: $constraints)} (about 90 s the first time)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install --quiet -e ".[test,postgres]" "apache-airflow==$AIRFLOW_VERSION" "${pins[@]}"
  echo "$want" > "$stamp"
fi
