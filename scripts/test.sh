#!/usr/bin/env bash
# The whole test suite: lint, types, unit, simulation and integration tests, benchmark smoke run.
# Installs the real servers the integration tests start and every extra: scripts/setup.sh test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh test
echo "== ruff" && .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy" && .venv/bin/mypy
echo "== pytest" && exec .venv/bin/pytest "$@"
