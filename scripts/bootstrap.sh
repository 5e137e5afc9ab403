#!/usr/bin/env bash
# Create .venv (if needed) and install the provider with Airflow and the test tools.
# Re-running is cheap: the install is skipped while pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

AIRFLOW_VERSION="${AIRFLOW_VERSION:-3.3.2}"
VENV="${VENV:-.venv}"

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

stamp="$VENV/.carerix-installed"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)-$AIRFLOW_VERSION"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "==> installing airflow-provider-carerix with apache-airflow==$AIRFLOW_VERSION into $VENV (about 90 s the first time)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install --quiet -e ".[test,postgres]" "apache-airflow==$AIRFLOW_VERSION"
  echo "$want" > "$stamp"
fi
