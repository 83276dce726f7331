#!/usr/bin/env bash
# The whole test suite: lint, types, the docs site (mkdocs --strict), a 1,000-run fault campaign,
# unit, simulation and integration tests, benchmark smoke run.
# Installs the real servers the integration tests start and every extra: scripts/setup.sh test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh test
echo "== ruff" && .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy" && .venv/bin/mypy
echo "== docs" && NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "${TMPDIR:-/tmp}/cloudha-site"
if [ $# -eq 0 ]; then
    # The four invariants on 1,000 random healed fault scenarios (docs/reliability.md):
    # any violation fails the run; its shrunk reproducer is left in the --out folder.
    echo "== fault campaign (1,000 runs)"
    .venv/bin/cloudha simulate --campaign 1000 --seed 2026 --jobs 2 \
        --out "${TMPDIR:-/tmp}/cloudha-campaign"
fi
echo "== pytest" && exec .venv/bin/pytest "$@"
