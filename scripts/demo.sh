#!/usr/bin/env bash
# The README's demo command: venv + install, then the whole local story (see scripts/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
